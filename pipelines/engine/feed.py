"""The Kafka-driven path of one pipeline: what arrives on topics becomes runs (decision 0020).

One consumer per pipeline (group ``[<prefix>-]<ns>-seldon-dataflow-<fnv32a of the name>``, so every
engine holding the pipeline shares the work and a new version resumes where the old one stopped):

- its input topic: a request produced there (by an async caller, or by hand, §5.5) is run to the
  end. Copies the engine wrote itself for a request it ran synchronously carry the audit header and
  are skipped.
- the topics of ``spec.input`` (other pipelines' inputs, outputs or steps, §4.8): messages are
  joined per key (the request id) with the pipeline's input join (:class:`pipelines.topology.RunState`);
  once the input stage fires, the run starts with what arrived. A key still waiting after its join
  window (or ``pending_seconds`` without one) is dropped; at most :data:`MAX_PENDING` keys wait.

Offsets are committed once the runs a fetch started have ended (at-least-once); keys waiting for a
join are held in memory only (a crash loses them: decision 0020).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import structlog
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from apis.kafka import (
    AUDIT_HEADER,
    INFER_TYPE_HEADER,
    InferType,
    KafkaConfig,
    consumer_group,
    fnv32a,
    propagated,
)
from apis.names import REQUEST_ID_HEADER
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines import kafka_clients
from pipelines.engine.codec import request_to_message, response_to_message
from pipelines.engine.runner import Runner, Running
from pipelines.engine.topics import source_of, topic_of
from pipelines.references import Direction, Source
from pipelines.tensors import Message, message_from_json
from pipelines.topology import PipelineRunError, RunState

log = structlog.get_logger("meshserve.pipelines.engine")
GROUP_COMPONENT = "seldon-dataflow"
MAX_PENDING = 10_000
FETCH_RECORDS = 64
RETRY_SECONDS = 2.0
# A fetch that started no run (only audit copies the engine wrote itself, or join parts) commits at
# most this often: skipping again after a restart is harmless, a commit per audit burst is not free.
IDLE_COMMIT_SECONDS = 1.0


class BadMessage(ValueError):
    pass


@dataclass(slots=True)
class _Pending:
    state: RunState
    since: float
    headers: dict[str, str]
    arrivals: list[tuple[Source, Message]] = field(default_factory=list)


class PipelineFeed:
    """Consumes one pipeline's topics until cancelled (see the module docstring)."""

    def __init__(
        self, runner: Runner, kafka: KafkaConfig, running: Running, *, pending_seconds: float
    ) -> None:
        self._runner = runner
        self._kafka = kafka
        self._running = running
        self._name = running.pipeline.name
        self._inputs = kafka.topics.pipeline_inputs(self._name)
        self._external = running.topology.external_sources
        self._topics = {self._inputs, *(topic_of(kafka.topics, s) for s in self._external)}
        self._pending: dict[str, _Pending] = {}
        self._pending_seconds = pending_seconds
        self.started = asyncio.Event()

    @property
    def group(self) -> str:
        return consumer_group(self._kafka, GROUP_COMPONENT, fnv32a(self._name))

    async def run(self) -> None:
        consumer = kafka_clients.consumer(self._kafka, self.group)
        try:
            while True:
                try:
                    await consumer.start()
                    break
                except (KafkaError, OSError) as error:
                    log.warning("Kafka not reachable yet", pipeline=self._name, error=repr(error))
                    await asyncio.sleep(RETRY_SECONDS)
            consumer.subscribe(sorted(self._topics))
            self.started.set()
            uncommitted = False
            next_idle_commit = 0.0
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=FETCH_RECORDS)
                runs = [t for batch in batches.values() for r in batch if (t := await self._handle(r))]
                runs += await self._expire()
                if runs:
                    await asyncio.wait(runs)
                uncommitted |= bool(batches)
                if uncommitted and (runs or time.monotonic() >= next_idle_commit):
                    with contextlib.suppress(KafkaError):
                        await consumer.commit()
                    uncommitted = False
                    next_idle_commit = time.monotonic() + IDLE_COMMIT_SECONDS
        finally:
            await kafka_clients.close_quietly(consumer)

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> asyncio.Task[object] | None:
        headers = {k.lower(): v for k, v in record.headers}
        key = (record.key or b"").decode(errors="replace")
        passed = {k: v.decode(errors="replace") for k, v in headers.items() if propagated(k)}
        passed.setdefault(REQUEST_ID_HEADER, key)
        if record.topic == self._inputs:
            if AUDIT_HEADER in headers:
                return None  # a synchronous request this engine (or another) ran already
            source: Source | None = self._running.pipeline.inputs_source
        else:
            source = source_of(self._kafka.topics, record.topic, headers)
        if source is None or (
            source != self._running.pipeline.inputs_source and source not in self._external
        ):
            return None
        try:
            message = decode(record.value, headers.get(INFER_TYPE_HEADER), source.direction)
        except BadMessage as problem:
            reason = (
                f"pipeline {self._name}: a message on {record.topic} is not an inference request: {problem}"
            )
            self._runner.writer.error(self._name, None, reason, passed[REQUEST_ID_HEADER], passed)
            return None
        if source == self._running.pipeline.inputs_source:
            return await self._start([(source, message)], passed)
        return await self._join(passed[REQUEST_ID_HEADER], source, message, passed)

    async def _join(
        self, key: str, source: Source, message: Message, headers: dict[str, str]
    ) -> asyncio.Task[object] | None:
        pending = self._pending.get(key)
        if pending is None:
            if len(self._pending) >= MAX_PENDING:
                oldest = next(iter(self._pending))  # inserted in arrival order, never re-inserted
                del self._pending[oldest]
                log.warning(
                    "too many requests waiting for a join; the oldest is dropped", pipeline=self._name
                )
            pending = self._pending[key] = _Pending(
                RunState(self._running.topology), time.monotonic(), headers
            )
        pending.arrivals.append((source, message))
        try:
            fired = pending.state.offer(source, message, time.monotonic() * 1000)
        except PipelineRunError:
            fired = []
        if not fired:
            return None
        del self._pending[key]
        return await self._start(pending.arrivals, pending.headers)

    async def _expire(self) -> list[asyncio.Task[object]]:
        now = time.monotonic()
        due: list[tuple[str, _Pending]] = []
        for key, pending in list(self._pending.items()):
            deadline = pending.state.next_deadline()
            if deadline is not None and deadline <= now * 1000:
                if pending.state.expire(now * 1000):
                    due.append((key, pending))
                del self._pending[key]
            elif now - pending.since > self._pending_seconds:
                del self._pending[key]
        tasks = []
        for _, pending in due:
            # Through _start, like every other run: it takes the run slot the run releases when it
            # ends (run_in_background alone released a slot never taken, loosening --max-runs).
            task = await self._start(pending.arrivals, pending.headers)
            if task is not None:
                tasks.append(task)
        return tasks

    async def _start(
        self, arrivals: list[tuple[Source, Message]], headers: dict[str, str]
    ) -> asyncio.Task[object] | None:
        await self._runner.slot()
        return self._runner.run_in_background(self._name, arrivals, headers)


def decode(value: bytes | None, infer_type: bytes | None, direction: Direction) -> Message:
    """A record's tensors: by ``seldon-infer-type`` when given, else protobuf by direction, else JSON."""
    if not value:
        raise BadMessage("the message has no value")
    kind = infer_type.decode(errors="replace") if infer_type else None
    try:
        if kind in (InferType.JSON_REQUEST, InferType.JSON_RESPONSE) or (kind is None and value[:1] == b"{"):
            body = json.loads(value)
            if not isinstance(body, dict):
                raise BadMessage("JSON value is not an object")
            tensors = body.get("inputs") if "inputs" in body else body.get("outputs")
            return message_from_json(tensors, field="inputs")
        if kind == InferType.PROTO_RESPONSE or (kind is None and direction is Direction.OUTPUTS):
            return response_to_message(pb.ModelInferResponse.FromString(value))
        message = request_to_message(pb.ModelInferRequest.FromString(value))
    except (DecodeError, ValueError, UnicodeDecodeError) as error:  # InvalidTensor is a ValueError
        raise BadMessage(str(error)) from None
    if not message:
        raise BadMessage("it holds no tensors")
    return message
