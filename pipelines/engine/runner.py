"""Runs requests through the pipelines this engine holds: synchronous ones, and those Kafka brings.

One :class:`Runner` per engine process. A run is :func:`pipelines.executor.execute` with the
engine's Envoy client as model caller and a :class:`pipelines.engine.audit.RunObserver`, so every
input and output of every step lands on its topic while the run itself never waits for Kafka.

- :meth:`Runner.infer` (the gateway's synchronous path) answers as soon as the pipeline's output
  exists; asynchronous branches go on in the background. The answer is the run's own return value,
  so no other caller's message can ever be taken for it, whatever ``x-request-id`` says.
- :meth:`Runner.run_in_background` (the Kafka path: async requests on the pipeline's input topic,
  other pipelines' data for ``spec.input``) runs to the end.

Every run holds one of ``max_runs`` slots until it ends: a synchronous request finding none free
is refused (:class:`Overloaded`), the Kafka path waits for one (back-pressure on its consumer).
Every run ends within ``run_timeout`` seconds. A failed run writes its error to the errors topic,
naming the step (``seldon-pipeline-errors``).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import structlog

from apis.names import REQUEST_ID_HEADER
from pipelines.engine.audit import TopicWriter
from pipelines.engine.batcher import StepBatcher
from pipelines.engine.models import EnvoyModels
from pipelines.executor import RunResult, execute, execute_external
from pipelines.model import Pipeline
from pipelines.references import Source
from pipelines.tensors import Message
from pipelines.topology import PipelineRunError, Topology

log = structlog.get_logger("meshserve.pipelines.engine")


class NotServed(Exception):
    """The pipeline is not loaded on this engine."""


class NoSyncOutput(Exception):
    """The pipeline has no ``output``: it can only be used asynchronously."""


class Overloaded(Exception):
    """Every run slot is taken."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before the pipeline's output existed."""


@dataclass(frozen=True, slots=True)
class Running:
    pipeline: Pipeline
    topology: Topology
    batchers: Mapping[str, StepBatcher] = field(default_factory=dict)  # step name -> its batcher

    def batch(self, step: str, tensors: Message, headers: Mapping[str, str]) -> None:
        """The runs' :class:`pipelines.executor.BatchSink`: to the step's batcher."""
        self.batchers[step].offer(step, tensors, headers)

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()


@dataclass(frozen=True, slots=True)
class Answer:
    output: Message
    routes: tuple[str, ...]  # x-seldon-route tokens of the models that answered, in call order
    version: int


def _ended(answered: asyncio.Future[Message | None], _: object) -> None:
    if not answered.done():
        answered.set_result(None)


def new_request_id() -> str:
    """20 lowercase base32hex characters, time first (the reference's XID shape, §6.5)."""
    raw = int(time.time()).to_bytes(4, "big") + os.urandom(8)
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


class Runner:
    """The pipelines loaded here and every run through them (see the module docstring)."""

    def __init__(
        self, models: EnvoyModels, writer: TopicWriter, *, max_runs: int, run_timeout: float
    ) -> None:
        self._models = models
        self.writer = writer
        self._slots = asyncio.Semaphore(max_runs)
        self._run_timeout = run_timeout
        self.running: dict[str, Running] = {}
        self._background: set[asyncio.Task[object]] = set()

    async def load(self, pipeline: Pipeline) -> Running:
        """Compile and hold ``pipeline``, replacing an older version (whose partial batches go)."""
        batchers = {
            step.name: StepBatcher(pipeline.name, step.name, step.batch, self._models, self.writer)
            for step in pipeline.steps
            if step.batch is not None
        }
        running = Running(pipeline, Topology(pipeline), batchers)
        old = self.running.get(pipeline.name)
        self.running[pipeline.name] = running
        if old is not None:
            await old.close()
        return running

    async def unload(self, name: str) -> Running | None:
        running = self.running.pop(name, None)
        if running is not None:
            await running.close()
        return running

    def get(self, name: str) -> Running:
        running = self.running.get(name)
        if running is None:
            raise NotServed(f"pipeline {name} is not loaded on this dataflow engine")
        return running

    async def infer(
        self, name: str, request: Message, headers: Mapping[str, str], *, deadline: float
    ) -> Answer:
        """The pipeline's output for ``request``; raises NotServed, NoSyncOutput, Overloaded,
        DeadlineExceeded or the run's :class:`PipelineRunError` (already on the errors topic)."""
        running = self.get(name)
        if running.pipeline.output is None:
            raise NoSyncOutput(
                f"pipeline {name} has no output, so it cannot answer synchronously; send it asynchronously"
            )
        if self._slots.locked():
            raise Overloaded(f"pipeline {name}: the engine is running its limit of requests; retry later")
        await self._slots.acquire()
        # Set by the run with its output, or to None when the run ends without one (one future to
        # await: asyncio.wait over two cost more than the rest of this method).
        answered: asyncio.Future[Message | None] = asyncio.get_running_loop().create_future()
        routes: list[str] = []
        task = asyncio.create_task(self._run(running, request, headers, routes, answered))
        task.add_done_callback(partial(_ended, answered))
        self._keep(task)
        try:
            async with asyncio.timeout(deadline):
                output = await answered
        except TimeoutError:
            task.cancel()
            raise DeadlineExceeded(
                f"pipeline {name}: no output within the request's deadline of {deadline:g} s"
            ) from None
        if output is not None:
            return Answer(output, tuple(routes), running.pipeline.version)
        result = task.result()  # raises the run's error
        assert isinstance(result, RunResult)
        return Answer(result.require_output(), tuple(routes), running.pipeline.version)

    def run_in_background(
        self, name: str, arrivals: Sequence[tuple[Source, Message]], headers: Mapping[str, str]
    ) -> asyncio.Task[object] | None:
        """Start a run fed from Kafka (its own inputs, or other pipelines' data); None if not loaded.

        The caller holds a slot already (:meth:`slot`); it is released when the run ends.
        """
        running = self.running.get(name)
        if running is None:
            self._slots.release()
            return None
        task = asyncio.create_task(self._run(running, None, headers, [], None, arrivals=arrivals))
        self._keep(task)
        return task

    async def slot(self) -> None:
        """Wait for a free run slot (the Kafka path's back-pressure)."""
        await self._slots.acquire()

    async def _run(
        self,
        running: Running,
        request: Message | None,
        headers: Mapping[str, str],
        routes: list[str],
        answered: asyncio.Future[Message | None] | None,
        *,
        arrivals: Sequence[tuple[Source, Message]] = (),
    ) -> RunResult:
        pipeline = running.pipeline
        request_id = headers.get(REQUEST_ID_HEADER, "")
        # A request from the pipeline's own input topic is there already; inputs joined from other
        # pipelines' data (spec.input) are written like a synchronous request's.
        from_topic = request is None and arrivals[0][0] == pipeline.inputs_source
        observer = self.writer.observer(
            pipeline.name, request_id, headers, inputs_written=from_topic, answers_on_topic=answered is None
        )

        async def call_model(model: str, tensors: Message, headers: Mapping[str, str]) -> Message | None:
            output, route = await self._models.call(model, tensors, headers)
            if route:
                routes.append(route)
            return output

        def on_output(message: Message) -> None:
            if answered is not None and not answered.done():
                answered.set_result(message)

        if from_topic:  # an async request: the run starts from what its topic holds
            request = arrivals[0][1]
        try:
            async with asyncio.timeout(self._run_timeout):
                if request is not None:
                    return await execute(
                        running.topology,
                        request,
                        call_model=call_model,
                        headers=headers,
                        observer=observer,
                        on_output=on_output,
                        batch=running.batch,
                    )
                return await execute_external(
                    running.topology,
                    arrivals,
                    call_model=call_model,
                    headers=headers,
                    observer=observer,
                    batch=running.batch,
                )
        except PipelineRunError as error:
            log.info("pipeline run failed", pipeline=pipeline.name, step=error.step, error=str(error)[:300])
            self.writer.error(pipeline.name, error.step, str(error), request_id, headers)
            raise
        except TimeoutError:
            message = f"pipeline {pipeline.name}: the run did not end within {self._run_timeout:g} s"
            self.writer.error(pipeline.name, None, message, request_id, headers)
            raise PipelineRunError(pipeline.name, None, message) from None

    def _keep(self, task: asyncio.Task[object]) -> None:
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        self._slots.release()  # here, not in the run: a task cancelled before it started has no finally
        if not task.cancelled():
            task.exception()  # retrieved: a background run's error is on the errors topic already

    async def close(self) -> None:
        for running in self.running.values():
            await running.close()
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)
