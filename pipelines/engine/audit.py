"""Every message of every run, written to its topic without the run waiting for Kafka (decision 0020).

:class:`TopicWriter` takes records synchronously (the executor's :class:`pipelines.topology.Observer`
calls it on the run's task) into a bounded queue; one task hands them to the producer in order, so a
request's messages keep their order on each partition (same key, same partition). The run never
waits: when Kafka is slower than the traffic and the queue is full, a record is dropped, counted and
logged: the answer goes out anyway (that is the trade-off the decision records).

Copies of calls the engine made itself carry :data:`apis.kafka.AUDIT_HEADER`, so the model gateway
and this engine's own input consumers do not execute them a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter

from apis.kafka import (
    AUDIT_HEADER,
    ERROR_HEADER,
    INFER_TYPE_HEADER,
    PIPELINE_HEADER,
    InferType,
    Topics,
    propagated,
)
from pipelines.engine.codec import message_to_request, message_to_response
from pipelines.engine.topics import topic_of
from pipelines.references import Direction, Source
from pipelines.tensors import InvalidTensor, Message

log = structlog.get_logger("meshserve.pipelines.engine")
MAX_QUEUED = 10_000
Headers = list[tuple[str, bytes]]


def kafka_headers(pipeline: str, headers: Mapping[str, str], *, audit: str = "") -> Headers:
    """The request's propagated headers plus ``pipeline`` (and the audit mark, when given)."""
    out = [(k, v.encode()) for k, v in headers.items() if propagated(k)]
    out.append((PIPELINE_HEADER, pipeline.encode()))
    if audit:
        out.append((AUDIT_HEADER, audit.encode()))
    return out


class TopicWriter:
    """A bounded queue of records and the task that produces them (see the module docstring)."""

    def __init__(self, topics: Topics, engine: str, registry: CollectorRegistry | None = None) -> None:
        self.topics = topics
        self._engine = engine
        self._queue: asyncio.Queue[tuple[str, bytes, bytes, Headers]] = asyncio.Queue(MAX_QUEUED)
        self._producer: AIOKafkaProducer | None = None
        self.records = Counter(
            "meshserve_engine_audit_records",
            "Messages written for audit, by outcome",
            ["outcome"],
            registry=registry,
        )

    async def run(self, producer: AIOKafkaProducer) -> None:
        """Hand queued records to ``producer`` until cancelled (the producer is started already)."""
        self._producer = producer
        try:
            while True:
                topic, key, value, headers = await self._queue.get()
                try:
                    sent = await producer.send(topic, value, key=key, headers=headers)
                except (KafkaError, OSError) as error:
                    self._failed(topic, error)
                    continue
                sent.add_done_callback(lambda done, topic=topic: self._delivered(topic, done))
        finally:
            self._producer = None

    async def write_now(self, topic: str, value: bytes, *, key: str, headers: Headers) -> None:
        """Written and acknowledged (async requests: the topic holds the only copy); raises KafkaError."""
        producer = self._producer
        if producer is None:
            raise KafkaError("the engine is not connected to Kafka yet")
        await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)

    def observer(
        self, pipeline: str, request_id: str, headers: Mapping[str, str], *, inputs_written: bool = False
    ) -> RunObserver:
        """``inputs_written``: the pipeline's inputs came from its topic; they are not written again."""
        marked = kafka_headers(pipeline, headers, audit=self._engine)
        return RunObserver(self, pipeline, request_id, marked, skip_inputs=inputs_written)

    def error(
        self, pipeline: str, step: str | None, message: str, request_id: str, headers: Mapping[str, str]
    ) -> None:
        failed = kafka_headers(pipeline, headers)
        failed.append((ERROR_HEADER, (step or pipeline).encode()))
        self.put(self.topics.errors, request_id, message.encode(), failed)

    def put(self, topic: str, key: str, value: bytes, headers: Headers) -> None:
        try:
            self._queue.put_nowait((topic, key.encode(), value, headers))
        except asyncio.QueueFull:
            self.records.labels("dropped").inc()
            log.warning("audit queue full; a message is not written", topic=topic, key=key[:64])

    def _delivered(self, topic: str, done: asyncio.Future[object]) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._failed(topic, error)
        else:
            self.records.labels("written").inc()

    def _failed(self, topic: str, error: BaseException | None) -> None:
        self.records.labels("failed").inc()
        log.warning("an audit message could not be written", topic=topic, error=repr(error))

    async def drain(self, seconds: float) -> None:
        """Give queued records up to ``seconds`` to leave (on shutdown), polling the queue."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._queue.empty():  # noqa: ASYNC110 - the writer task empties it
                    await asyncio.sleep(0.01)


class RunObserver:
    """One run's :class:`pipelines.topology.Observer`: each message to its topic, keyed by request id."""

    def __init__(
        self, writer: TopicWriter, pipeline: str, request_id: str, headers: Headers, *, skip_inputs: bool
    ) -> None:
        self._writer = writer
        self._skip = Source(pipeline, None, Direction.INPUTS) if skip_inputs else None
        self._pipeline = pipeline
        self._key = request_id
        self._headers = headers

    def record(self, source: Source, message: Message) -> None:
        if source == self._skip:
            return
        try:
            if source.direction is Direction.INPUTS:
                value = message_to_request(message, request_id=self._key).SerializeToString()
                kind = InferType.PROTO_REQUEST
            else:
                model = source.step or ""
                value = message_to_response(message, request_id=self._key, model=model).SerializeToString()
                kind = InferType.PROTO_RESPONSE
        except InvalidTensor as error:  # a model answered data its datatype cannot hold
            log.warning("a message cannot be encoded for Kafka", source=str(source), error=str(error))
            return
        topic = topic_of(self._writer.topics, source)
        self._writer.put(topic, self._key, value, [*self._headers, (INFER_TYPE_HEADER, str(kind).encode())])
