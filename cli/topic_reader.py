"""Bounded reads of the newest messages of some Kafka topics, for ``pipeline inspect``.

No consumer group and no commits: each partition of each topic is read from ``end - window`` up
to the end offset it had when the read started, so a read ends even while producers keep writing,
and at most ``window`` messages per partition are looked at. The whole read (connecting included)
has one deadline. Topics that do not exist (yet) come back empty; nothing is created.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from apis.kafka import KafkaConfig, KafkaConfigError
from cli.errors import CliError
from pipelines import kafka_clients

MAX_WINDOW = 10_000  # messages per partition one inspect may look at
POLL_MS = 200
POLL_RECORDS = 500


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


async def read_newest(
    config: KafkaConfig, topics: Sequence[str], *, window: int, key: bytes | None, deadline_s: float
) -> dict[str, list[Message]]:
    """Per topic, its messages (oldest first) among the newest ``window`` of each partition; only
    those keyed ``key`` when given, else the newest ``window`` of the topic overall."""
    if not 1 <= window <= MAX_WINDOW:
        raise CliError(f"--offset {window} is outside 1..{MAX_WINDOW}")
    where = ",".join(config.bootstrap_servers)
    try:
        consumer = AIOKafkaConsumer(**kafka_clients.consumer_options(config, None))
    except KafkaConfigError as exc:  # e.g. an unreadable SASL password file
        raise CliError(str(exc)) from exc
    found: dict[str, list[Message]] = {topic: [] for topic in topics}
    try:
        async with asyncio.timeout(deadline_s):
            await consumer.start()
            await _read(consumer, topics, window, key, found)
    except TimeoutError:
        took = f"took over {deadline_s:g}s (--timeout)"
        raise CliError(f"reading {len(topics)} topic(s) from Kafka at {where} {took}") from None
    except (KafkaError, OSError) as exc:
        raise CliError(f"cannot read from Kafka at {where}: {exc}") from exc
    finally:
        await kafka_clients.close_quietly(consumer)
    for messages in found.values():
        messages.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
        if key is None:
            del messages[:-window]
    return found


async def _read(
    consumer: AIOKafkaConsumer,
    topics: Sequence[str],
    window: int,
    key: bytes | None,
    found: dict[str, list[Message]],
) -> None:
    existing = await consumer.topics()  # a metadata request for all topics: creates none
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        if topic in existing
        for partition in sorted(consumer.partitions_for_topic(topic) or ())
    ]
    if not partitions:
        return
    ends = await consumer.end_offsets(partitions)
    begins = await consumer.beginning_offsets(partitions)
    pending = {tp: ends[tp] for tp in partitions if ends[tp] > begins[tp]}
    if not pending:
        return
    consumer.assign(list(pending))
    for tp in pending:
        consumer.seek(tp, max(begins[tp], ends[tp] - window))
    while pending:
        batches = await consumer.getmany(*pending, timeout_ms=POLL_MS, max_records=POLL_RECORDS)
        for tp, records in batches.items():
            end = pending.get(tp)
            if end is None:
                continue
            wanted = (r for r in records if r.offset < end and (key is None or r.key == key))
            found[tp.topic].extend(_message(r) for r in wanted)
        for tp in list(pending):
            # The position, not the last record: compaction and transaction markers leave gaps.
            if await consumer.position(tp) >= pending[tp]:
                del pending[tp]
                consumer.pause(tp)


def _message(record: ConsumerRecord[bytes, bytes]) -> Message:
    return Message(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        value=record.value,
        headers=tuple((str(k), bytes(v or b"")) for k, v in record.headers),
    )
