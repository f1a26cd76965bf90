"""One Kafka consumer per bucket of models (the reference's consumer hash table).

A :class:`Bucket` owns one aiokafka consumer in its bucket's group (shared by every model gateway
replica; :mod:`pipelines.modelgateway.assignment` splits the partitions) and the input topics of
the models hashed to it. It fetches at most ``workers`` records at a time, hands them to the
handler concurrently, and commits, per partition, the offset after the records whose result was
written (to an output or the errors topic). A record whose result could not be written
(:class:`NotWritten`) is not committed: the consumer seeks back to it and reads it again. So a
record is answered at least once: a replica killed mid-batch leaves its uncommitted records to the
member that gets the partition next, which may answer some of them a second time. At most
``workers`` model calls are in flight per bucket; a slow call holds back its batch's commit.

Records the ``skip`` predicate names (the dataflow engine's audit copies of calls it made itself:
most of what a model's input topic carries under synchronous pipeline traffic) are passed over
without a task each, and a fetch of nothing else commits at most every
:data:`IDLE_COMMIT_SECONDS`: reading them again after a restart is harmless, a commit per audit
burst is not free (for this process and for the broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from apis.kafka import KafkaConfig
from pipelines import kafka_clients
from pipelines.modelgateway.assignment import RingAssignor

log = structlog.get_logger("meshserve.pipelines.modelgateway")

Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]
Skip = Callable[[ConsumerRecord[bytes, bytes]], bool]
Owned = Callable[[str, frozenset[TopicPartition]], None]  # group, partitions it reads now
FETCH_TIMEOUT_MS = 500
IDLE_COMMIT_SECONDS = 1.0
RETRY_SECONDS = 1.0


class NotWritten(Exception):
    """The record's result could not be written to Kafka: read the record again later."""


class Bucket:
    """The consumer of one group and the topics it follows; :meth:`close` stops it."""

    def __init__(
        self,
        kafka: KafkaConfig,
        group: str,
        handler: Handler,
        *,
        workers: int,
        replica: str,
        owned: Owned | None = None,
        skip: Skip | None = None,
    ) -> None:
        self.group = group
        self._kafka = kafka
        self._handler = handler
        self._skip = skip
        self._workers = workers
        self._assignor = RingAssignor(replica)
        self._owned = owned
        self._topics: frozenset[str] = frozenset()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def topics(self) -> frozenset[str]:
        return self._topics

    def follow(self, topics: frozenset[str]) -> None:
        """Consume exactly ``topics`` from now on (a change re-joins the group)."""
        if topics == self._topics:
            return
        self._topics = topics
        if self._consumer is not None:
            self._subscribe(self._consumer)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bucket {self.group}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._report(frozenset())

    def _subscribe(self, consumer: AIOKafkaConsumer) -> None:
        consumer.subscribe(sorted(self._topics), listener=_Listener(self._report, consumer))

    def _report(self, partitions: frozenset[TopicPartition]) -> None:
        if self._owned is not None:
            self._owned(self.group, partitions)

    async def _run(self) -> None:
        while True:
            consumer = kafka_clients.consumer(self._kafka, self.group, self._assignor)
            try:
                await consumer.start()
                self._consumer = consumer
                self._subscribe(consumer)
                await self._consume(consumer)
            except (KafkaError, OSError) as error:
                log.warning("consumer failed; starting a new one", group=self.group, error=repr(error))
            finally:
                self._consumer = None
                self._report(frozenset())
                await kafka_clients.close_quietly(consumer)
            await asyncio.sleep(RETRY_SECONDS)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        pending: dict[TopicPartition, int] = {}  # per partition, the offset to commit next
        next_idle_commit = 0.0
        while True:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self._workers)
            fetched = [record for batch in batches.values() for record in batch]
            skip = self._skip
            records = [r for r in fetched if not skip(r)] if skip is not None else fetched
            for record in fetched:
                partition = TopicPartition(record.topic, record.partition)
                pending[partition] = max(pending.get(partition, 0), record.offset + 1)
            unwritten: dict[TopicPartition, int] = {}
            if records:
                results = await asyncio.gather(*(self._handler(r) for r in records), return_exceptions=True)
                unwritten = _first_unwritten(records, results)
                pending.update(unwritten)  # up to, not including, the first record to read again
            if not pending or (not records and time.monotonic() < next_idle_commit):
                continue
            await self._commit(consumer, pending)
            pending = {}
            next_idle_commit = time.monotonic() + IDLE_COMMIT_SECONDS
            assigned = consumer.assignment()
            for partition, offset in unwritten.items():
                if partition in assigned:  # else a rebalance gave it away: its new reader reads it
                    consumer.seek(partition, offset)
            if unwritten:
                await asyncio.sleep(RETRY_SECONDS)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit({p: OffsetAndMetadata(o, "") for p, o in offsets.items()})
        except KafkaError as error:  # a rebalance took the partitions: their new reader reads them again
            log.warning("offset commit failed", group=self.group, error=repr(error))


def _first_unwritten(
    records: list[ConsumerRecord[bytes, bytes]], results: list[BaseException | None]
) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record whose result was not written."""
    first: dict[TopicPartition, int] = {}
    for record, result in zip(records, results, strict=True):
        if isinstance(result, NotWritten):
            partition = TopicPartition(record.topic, record.partition)
            first[partition] = min(first.get(partition, record.offset), record.offset)
        elif isinstance(result, Exception):  # the handler's own bug: logged, not retried forever
            log.error(
                "handling a record failed", topic=record.topic, offset=record.offset, error=repr(result)
            )
    return first


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Reports the partitions this member reads after every rebalance."""

    def __init__(
        self, report: Callable[[frozenset[TopicPartition]], None], consumer: AIOKafkaConsumer
    ) -> None:
        self._report = report
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: object) -> None:
        self._report(frozenset())

    async def on_partitions_assigned(self, assigned: object) -> None:
        self._report(frozenset(self._consumer.assignment()))
