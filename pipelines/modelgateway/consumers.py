"""One Kafka consumer per bucket of models (the reference's consumer hash table).

A :class:`Bucket` owns one aiokafka consumer in its own group and the input topics of the models
hashed to it. It fetches at most ``workers`` records at a time, hands them to the handler
concurrently, and commits their offsets once every one of them is handled (written to an output or
the errors topic): at-least-once, and never more than ``workers`` model calls in flight per bucket.
A slow call holds back its batch's commit, not the other records' calls.

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
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from apis.kafka import KafkaConfig
from pipelines import kafka_clients

log = structlog.get_logger("meshserve.pipelines.modelgateway")

Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]
Skip = Callable[[ConsumerRecord[bytes, bytes]], bool]
FETCH_TIMEOUT_MS = 500
IDLE_COMMIT_SECONDS = 1.0
RETRY_SECONDS = 1.0


class Bucket:
    """The consumer of one group and the topics it follows; :meth:`close` stops it."""

    def __init__(
        self, kafka: KafkaConfig, group: str, handler: Handler, *, workers: int, skip: Skip | None = None
    ) -> None:
        self.group = group
        self._kafka = kafka
        self._handler = handler
        self._skip = skip
        self._workers = workers
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
            self._consumer.subscribe(sorted(topics))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"bucket {self.group}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            consumer = kafka_clients.consumer(self._kafka, self.group)
            try:
                await consumer.start()
                self._consumer = consumer
                consumer.subscribe(sorted(self._topics))
                await self._consume(consumer)
            except (KafkaError, OSError) as error:
                log.warning("consumer failed; starting a new one", group=self.group, error=repr(error))
            finally:
                self._consumer = None
                await kafka_clients.close_quietly(consumer)
            await asyncio.sleep(RETRY_SECONDS)

    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        uncommitted = False
        next_idle_commit = 0.0
        while True:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=self._workers)
            fetched = [record for batch in batches.values() for record in batch]
            skip = self._skip
            records = [r for r in fetched if not skip(r)] if skip is not None else fetched
            uncommitted |= bool(fetched)
            if records:
                await self._handle_all(records)
            if not uncommitted or (not records and time.monotonic() < next_idle_commit):
                continue
            try:
                await consumer.commit()
            except KafkaError as error:  # a rebalance took the partitions: they are read again
                log.warning("offset commit failed", group=self.group, error=repr(error))
            uncommitted = False
            next_idle_commit = time.monotonic() + IDLE_COMMIT_SECONDS

    async def _handle_all(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        results = await asyncio.gather(*(self._handler(r) for r in records), return_exceptions=True)
        for record, result in zip(records, results, strict=True):
            if isinstance(result, Exception):  # the handler's own bug: keep serving the others
                log.error(
                    "handling a record failed", topic=record.topic, offset=record.offset, error=repr(result)
                )
