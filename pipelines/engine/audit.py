"""Every message of every run, written to its topic without the run waiting for Kafka (decision 0020).

:class:`TopicWriter` takes records synchronously (the executor's :class:`pipelines.executor.Observer`
calls it on the run's task) into a bounded queue; one task encodes them (protobuf, off the request's
critical path: the answer leaves before its audit copies are encoded) and hands them to the producer
in order, so a request's messages keep their order on each partition (same key, same partition).
The run never waits: when Kafka is slower than the traffic and the queue is full, a record is
dropped, counted and logged: the answer goes out anyway (that is the trade-off the decision records).

The task gathers records for :data:`GATHER_SECONDS` and hands the whole burst to the producer as
one record batch per topic partition (:mod:`pipelines.engine.batches`), so it leaves in one produce
request rather than one each: each step of a request adds four records, and a produce request per
record cost more CPU (engine, broker and the consumers it wakes) than the run itself; so did
``send`` per record, so a burst's batches are built without it. Acknowledged writes
(:meth:`TopicWriter.write_now`, async requests) do not wait for a gathering, and neither does an
answer: the output of a run fed from Kafka (its caller reads it from the outputs topic) and an
error record end the gathering at once, taking the copies queued so far along.

Copies of calls the engine made itself carry :data:`apis.kafka.AUDIT_HEADER`, so the model gateway
and this engine's own input consumers do not execute them a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

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
    propagated,
)
from apis.kafka_topics import Topics
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.engine.batches import Encoded, Headers, send_burst
from pipelines.engine.codec import message_to_request, message_to_response
from pipelines.engine.topics import topic_of
from pipelines.references import Direction, Source
from pipelines.tensors import InvalidTensor, Message

log = structlog.get_logger("meshserve.pipelines.engine")
MAX_QUEUED = 10_000
MAX_BURST = 1_000  # records handed to the producer at once
GATHER_SECONDS = 0.05  # how long audit copies wait to leave together (an answer ends the wait)
_REQUEST = (INFER_TYPE_HEADER, str(InferType.PROTO_REQUEST).encode())
_RESPONSE = (INFER_TYPE_HEADER, str(InferType.PROTO_RESPONSE).encode())


@dataclass(frozen=True, slots=True)
class Record:
    """One message waiting for the producer; a run's tensors are encoded only when it is sent."""

    topic: str
    key: bytes
    headers: Headers
    value: bytes = b""
    message: Message | None = None  # encoded on the writer's task when set
    source: Source | None = None  # of ``message``: request (inputs) or response (outputs) proto

    def encoded(self, done: dict[tuple[object, ...], bytes] | None = None) -> bytes:
        """The value; raises InvalidTensor when a model answered data its datatype cannot hold.

        ``done``: encodings already made in this burst. A run writes the same tensors twice (a
        pipeline's inputs are its first step's inputs, its last step's outputs its own outputs), so
        each is encoded once; the records hold their tensors, so the ids cannot be reused meanwhile.
        """
        if self.message is None or self.source is None:
            return self.value
        inputs = self.source.direction is Direction.INPUTS
        key = (inputs, self.key, *map(id, self.message))
        body = done.get(key) if done is not None else None
        if body is None:
            request_id = self.key.decode()
            message = (
                message_to_request(self.message, request_id=request_id)
                if inputs
                else message_to_response(self.message, request_id=request_id)
            )
            body = message.SerializeToString()
            if done is not None:
                done[key] = body
        if inputs or not self.source.step:
            return body
        # model_name is field 1, serialised first: prefixing it gives the bytes a full encoding would.
        return pb.ModelInferResponse(model_name=self.source.step).SerializeToString() + body


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
        self._queue: asyncio.Queue[Record] = asyncio.Queue(MAX_QUEUED)
        self._answer_queued = asyncio.Event()  # ends the gathering: a caller waits for that record
        self._producer: AIOKafkaProducer | None = None
        self.records = Counter(
            "meshserve_engine_audit_records",
            "Messages written for audit, by outcome",
            ["outcome"],
            registry=registry,
        )

    async def run(self, producer: AIOKafkaProducer) -> None:
        """Hand queued records to ``producer`` in bursts until cancelled (it is started already)."""
        self._producer = producer
        try:
            while True:
                burst = [await self._queue.get()]
                if self._queue.qsize() < MAX_BURST and not self._answer_queued.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._answer_queued.wait(), GATHER_SECONDS)
                # Cleared before the queue is drained: an answer queued after this leaves in this
                # burst or sets the event for the next one; none waits a gathering.
                self._answer_queued.clear()
                while not self._queue.empty() and len(burst) < MAX_BURST:
                    burst.append(self._queue.get_nowait())
                done: dict[tuple[object, ...], bytes] = {}
                encoded = [e for e in (self._encoded(r, done) for r in burst) if e is not None]
                # One batch per topic partition; submitting suspends only when the producer's buffer is full.
                with contextlib.suppress(KafkaError, OSError):  # counted and logged by _delivered
                    await send_burst(producer, encoded, self._delivered)
        finally:
            self._producer = None

    def _encoded(self, record: Record, done: dict[tuple[object, ...], bytes]) -> Encoded | None:
        try:
            return Encoded(record.topic, record.key, record.encoded(done), record.headers)
        except InvalidTensor as error:
            self._unencodable(record, error)
            return None

    async def write_now(self, topic: str, value: bytes, *, key: str, headers: Headers) -> None:
        """Written and acknowledged (async requests: the topic holds the only copy); raises KafkaError."""
        producer = self._producer
        if producer is None:
            raise KafkaError("the engine is not connected to Kafka yet")
        await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)

    def observer(
        self,
        pipeline: str,
        request_id: str,
        headers: Mapping[str, str],
        *,
        inputs_written: bool = False,
        answers_on_topic: bool = False,
    ) -> RunObserver:
        """``inputs_written``: the pipeline's inputs came from its topic; they are not written again.
        ``answers_on_topic``: the run was fed from Kafka, so its output record is its caller's answer."""
        marked = kafka_headers(pipeline, headers, audit=self._engine)
        return RunObserver(
            self, pipeline, request_id, marked, skip_inputs=inputs_written, answers=answers_on_topic
        )

    def error(
        self, pipeline: str, step: str | None, message: str, request_id: str, headers: Mapping[str, str]
    ) -> None:
        failed = kafka_headers(pipeline, headers)
        failed.append((ERROR_HEADER, (step or pipeline).encode()))
        self.put(self.topics.errors, request_id, message.encode(), failed, answer=True)

    def put(self, topic: str, key: str, value: bytes, headers: Headers, *, answer: bool = False) -> None:
        self.put_record(Record(topic, key.encode(), headers, value), answer=answer)

    def put_record(self, record: Record, *, answer: bool = False) -> None:
        """``answer``: someone waits to read this record, so the gathering ends now."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.records.labels("dropped").inc()
            log.warning("audit queue full; a message is not written", topic=record.topic, key=record.key[:64])
            return
        if answer:
            self._answer_queued.set()

    def _unencodable(self, record: Record, error: InvalidTensor) -> None:
        self.records.labels("unencodable").inc()
        log.warning("a message cannot be encoded for Kafka", source=str(record.source), error=str(error))

    def _delivered(self, topic: str, count: int, error: BaseException | None) -> None:
        if error is None:
            self.records.labels("written").inc(count)
            return
        self.records.labels("failed").inc(count)
        log.warning("audit messages could not be written", topic=topic, count=count, error=repr(error))

    async def drain(self, seconds: float) -> None:
        """Give queued records up to ``seconds`` to leave (on shutdown), polling the queue."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not self._queue.empty():  # noqa: ASYNC110 - the writer task empties it
                    await asyncio.sleep(0.01)


class RunObserver:
    """One run's :class:`pipelines.executor.Observer`: each message to its topic, keyed by request id."""

    def __init__(
        self,
        writer: TopicWriter,
        pipeline: str,
        request_id: str,
        headers: Headers,
        *,
        skip_inputs: bool,
        answers: bool = False,
    ) -> None:
        self._writer = writer
        self._skip = Source(pipeline, None, Direction.INPUTS) if skip_inputs else None
        self._answer = Source(pipeline, None, Direction.OUTPUTS) if answers else None
        self._pipeline = pipeline
        self._key = request_id.encode()
        self._headers = headers

    def record(self, source: Source, message: Message) -> None:
        if source == self._skip:
            return
        kind = _REQUEST if source.direction is Direction.INPUTS else _RESPONSE
        topic = topic_of(self._writer.topics, source)
        headers = [*self._headers, kind]
        record = Record(topic, self._key, headers, message=message, source=source)
        self._writer.put_record(record, answer=source == self._answer)
