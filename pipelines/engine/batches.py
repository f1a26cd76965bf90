"""One burst of audit records handed to the producer as one record batch per topic partition.

``AIOKafkaProducer.send`` costs a coroutine, a partitioner call (pure-Python murmur2), a future and
an accumulator lookup per record; a request writes four records, so that was a sixth of the
engine's CPU under load. A burst is instead appended to :class:`aiokafka.producer.BatchBuilder`
objects (C record builder) and each is submitted once with ``send_batch``. The partition is the one
``send`` would choose (the default partitioner on the key; the engine's producer never sets another),
computed once per key and partition count: a request's records share their key. Records keep their
order within each partition: batches of a partition are submitted in the order they filled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiokafka.partitioner import DefaultPartitioner

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Encoded:
    topic: str
    key: bytes
    value: bytes
    headers: Headers


Delivered = Callable[[str, int, "BaseException | None"], None]
"""Called once per submitted batch with its topic, its record count and its error (None: written)."""


class BatchProducer(Protocol):
    """What :func:`send_burst` needs of ``AIOKafkaProducer``."""

    async def partitions_for(self, topic: str) -> set[int]: ...

    def create_batch(self) -> Any: ...

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any: ...


@dataclass(slots=True)
class _Batch:
    topic: str
    partition: int
    builder: Any
    count: int = 0


async def send_burst(producer: BatchProducer, records: Sequence[Encoded], delivered: Delivered) -> None:
    """Submit ``records`` as batches; every record is reported to ``delivered`` exactly once.

    Raises what ``partitions_for``/``send_batch`` raise (KafkaError, OSError, a metadata timeout)
    once the records not submitted are reported as failed, so the caller only logs.
    """
    try:
        batches = await _assemble(producer, records, delivered)
    except BaseException as error:
        delivered(records[0].topic if records else "", len(records), error)
        raise
    for index, batch in enumerate(batches):
        try:
            future = await producer.send_batch(batch.builder, batch.topic, partition=batch.partition)
        except BaseException as error:
            for left in batches[index:]:
                delivered(left.topic, left.count, error)
            raise
        future.add_done_callback(partial(_done, delivered, batch.topic, batch.count))


async def _assemble(
    producer: BatchProducer, records: Sequence[Encoded], delivered: Delivered
) -> list[_Batch]:
    """The batches, in the order they are to be submitted (per partition: the order they filled)."""
    partitioner = DefaultPartitioner()
    partitions: dict[str, list[int]] = {}
    chosen: dict[tuple[bytes, int], int] = {}
    filling: dict[tuple[str, int], _Batch] = {}
    out: list[_Batch] = []
    for record in records:
        known = partitions.get(record.topic)
        if known is None:
            known = partitions[record.topic] = sorted(await producer.partitions_for(record.topic))
        slot = (record.key, len(known))
        partition = chosen.get(slot)
        if partition is None:
            partition = chosen[slot] = partitioner(record.key, known, known)
        batch = filling.get((record.topic, partition))
        if batch is None or not _append(batch, record):
            batch = filling[(record.topic, partition)] = _Batch(
                record.topic, partition, producer.create_batch()
            )
            out.append(batch)
            if not _append(batch, record):  # aiokafka takes any record into an empty batch; never here
                delivered(record.topic, 1, ValueError("the record does not fit an empty batch"))
    return [batch for batch in out if batch.count]


def _append(batch: _Batch, record: Encoded) -> bool:
    added = batch.builder.append(timestamp=None, key=record.key, value=record.value, headers=record.headers)
    if added is None:
        return False
    batch.count += 1
    return True


def _done(delivered: Delivered, topic: str, count: int, done: asyncio.Future[object]) -> None:
    if done.cancelled():
        delivered(topic, count, asyncio.CancelledError())
    else:
        delivered(topic, count, done.exception())
