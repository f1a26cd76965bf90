"""The pipeline gateway's logic, shared by its HTTP and gRPC fronts (seldon-pipelines.md §6).

Which pipeline: ``seldon-internal-model`` (Envoy's route sets it to ``<p>.pipeline`` and removes a
caller's own), else ``seldon-model``, else the path or the request's model name; the ``.pipeline``
suffix is optional; the name is validated by full match.

Which request id: the caller's ``x-request-id`` (printable, at most 128 characters) or a new
XID-like one. It keys the request's Kafka messages; it never matches an answer (a synchronous answer
is the run's own return value), so a repeated or guessed id cannot mix two callers' answers.

Sync (the default): run it (:meth:`pipelines.engine.runner.Runner.infer`) within the deadline: the
caller's (``seldon-deadline-ms``, gRPC's own) capped by the engine's ``--request-timeout-seconds``.
Async (``seldon-async: true``): the request is written to the pipeline's input topic, acknowledged
by Kafka, and answered with its id at once; the engine's Kafka path runs it. When Kafka does not
acknowledge it (down, restarting, the topic lost) the caller gets 503 / UNAVAILABLE saying so, and
504 / DEADLINE_EXCEEDED when the acknowledgement does not come within the request's deadline.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from apis.kafka import propagated
from apis.names import INTERNAL_MODEL_HEADER, MODEL_HEADER, PIPELINE_SUFFIX, REQUEST_ID_HEADER
from apis.validation import InvalidResource, validate_name
from pipelines.engine.audit import kafka_headers
from pipelines.engine.codec import message_to_request
from pipelines.engine.control import StatusFollower
from pipelines.engine.errors import BadRequest, KafkaUnavailable, NotReady
from pipelines.engine.runner import Answer, DeadlineExceeded, Runner, new_request_id
from pipelines.tensors import Message

ASYNC_HEADER = "seldon-async"
DEADLINE_HEADER = "seldon-deadline-ms"
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}")


@dataclass(frozen=True, slots=True)
class Request:
    pipeline: str
    request_id: str
    headers: dict[str, str]  # propagated ones, x-request-id included
    deadline: float
    asynchronous: bool


class Gateway:
    def __init__(self, runner: Runner, status: StatusFollower, *, max_deadline: float) -> None:
        self.runner = runner
        self._status = status
        self._max_deadline = max_deadline

    def request(self, headers: Mapping[str, str], named: str, *, deadline: float | None = None) -> Request:
        """Read a call's pipeline, id, propagated headers and deadline; raises BadRequest."""
        lowered = {k.lower(): v for k, v in headers.items()}
        raw = lowered.get(INTERNAL_MODEL_HEADER) or lowered.get(MODEL_HEADER) or named
        pipeline = pipeline_name(raw)
        request_id = lowered.get(REQUEST_ID_HEADER) or new_request_id()
        if not _REQUEST_ID.fullmatch(request_id):
            raise BadRequest(f"x-request-id must be 1-{MAX_REQUEST_ID} printable characters without spaces")
        passed = {k: v for k, v in lowered.items() if propagated(k)}
        passed[REQUEST_ID_HEADER] = request_id
        wanted = self._max_deadline if deadline is None else min(deadline, self._max_deadline)
        if DEADLINE_HEADER in lowered:
            try:
                milliseconds = int(lowered[DEADLINE_HEADER])
            except ValueError:
                raise BadRequest(f"{DEADLINE_HEADER} must be a whole number of milliseconds") from None
            if milliseconds <= 0:
                raise BadRequest(f"{DEADLINE_HEADER} must be positive")
            wanted = min(wanted, milliseconds / 1000)
        flag = lowered.get(ASYNC_HEADER, "false").lower()
        if flag not in ("true", "false"):
            raise BadRequest(f"{ASYNC_HEADER} must be true or false")
        return Request(pipeline, request_id, passed, wanted, flag == "true")

    def check_ready(self, pipeline: str) -> None:
        self.runner.get(pipeline)  # NotServed first: not loaded here at all
        if not self._status.ready(pipeline):
            raise NotReady(f"pipeline {pipeline} is not ready: its models are not all available yet")

    def ready(self, pipeline: str) -> bool:
        return pipeline in self.runner.running and self._status.ready(pipeline)

    async def infer(self, request: Request, message: Message) -> Answer | None:
        """The answer, or None for an async request (written to the input topic)."""
        self.check_ready(request.pipeline)
        if request.asynchronous:
            writer = self.runner.writer
            value = message_to_request(message, request_id=request.request_id).SerializeToString()
            topic = writer.topics.pipeline_inputs(request.pipeline)
            headers = kafka_headers(request.pipeline, request.headers)
            try:
                async with asyncio.timeout(request.deadline):
                    await writer.write_now(topic, value, key=request.request_id, headers=headers)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"pipeline {request.pipeline}: Kafka did not acknowledge the async request within "
                    f"its deadline ({request.deadline:g} s)"
                ) from None
            except KafkaError as error:
                raise KafkaUnavailable(
                    f"pipeline {request.pipeline}: the async request could not be written to {topic}: "
                    f"Kafka is unavailable ({type(error).__name__}); retry later"
                ) from error
            return None
        return await self.runner.infer(request.pipeline, message, request.headers, deadline=request.deadline)


def pipeline_name(raw: str) -> str:
    name = raw[: -len(PIPELINE_SUFFIX)] if raw.endswith(PIPELINE_SUFFIX) else raw
    try:
        return validate_name(name, kind="pipeline")
    except InvalidResource as error:
        raise BadRequest(str(error)) from None
