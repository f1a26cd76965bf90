"""Runs one request through a pipeline to its end: :func:`execute` and :func:`execute_external`.

It knows no transport. It drives a :class:`pipelines.topology.RunState` with an injected
:class:`ModelCaller`: independent steps run concurrently, each step's request and response is
reported to an optional :class:`Observer` in the order they happen (the messages the Kafka path
writes to topics), and the pipeline output is handed to ``on_output`` the moment it exists, before
asynchronous branches finish. The synchronous path (HTTP/gRPC, models called through Envoy) uses
it as is; the Kafka path can too, with a caller that produces to ``model.<m>.inputs`` and awaits
``model.<m>.outputs``.

A failing model call fails the whole request (:class:`pipelines.topology.StepFailed`, naming the
step); the other calls are cancelled. A batched step's joined input goes to the ``batch`` hook (a
:class:`BatchSink`) and the run goes on without it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pipelines.references import Direction, Source
from pipelines.tensors import Message
from pipelines.topology import Firing, NodeKind, NoOutput, RunState, StepFailed, Topology


class ModelCaller(Protocol):
    """Calls one step's model. Returns its output tensors; None or () means "no output".

    May raise anything: the request fails with :class:`StepFailed` naming the step. It is cancelled
    when the request fails elsewhere or the caller of :func:`execute` is cancelled, so it must be
    cancellation-safe. ``headers`` are the request's (``x-request-id``, propagated ``x-*``); it must
    not mutate them.
    """

    async def __call__(self, model: str, tensors: Message, headers: Mapping[str, str]) -> Message | None: ...


class BatchSink(Protocol):
    """Takes a batched step's joined input for one request (synchronous: it must not block)."""

    def __call__(self, step: str, tensors: Message, headers: Mapping[str, str]) -> None: ...


class Observer(Protocol):
    """Sees every message of a request, in the order they happen, as the Kafka path writes them.

    Called with the pipeline's inputs, each step's input message before its model is called, each
    step's output (``()`` when it returned nothing), and the pipeline's output. Synchronous and on
    the driver's task: it must not block (queue the work, e.g. to a Kafka producer).
    """

    def record(self, source: Source, message: Message) -> None: ...


@dataclass(frozen=True, slots=True)
class RunResult:
    pipeline: str
    output: Message | None  # None: the request ended without the pipeline's output
    runs: Mapping[str, int]  # step name -> times its model was called

    def require_output(self) -> Message:
        """The output, or :class:`NoOutput` saying which steps never ran."""
        if self.output is not None:
            return self.output
        raise NoOutput(self.pipeline, None, f"pipeline {self.pipeline} produced no output{_idle(self)}")


def _idle(result: RunResult) -> str:
    return f" (steps that ran: {', '.join(sorted(result.runs)) or 'none'})"


async def execute(
    topology: Topology,
    request: Message,
    *,
    call_model: ModelCaller,
    headers: Mapping[str, str] | None = None,
    observer: Observer | None = None,
    on_output: Callable[[Message], None] | None = None,
    batch: BatchSink | None = None,
) -> RunResult:
    """Run one request (the pipeline's inputs) through ``topology`` until nothing more can happen.

    Returns when every branch, synchronous or not, has ended; ``on_output`` is called (on this task)
    as soon as the pipeline output exists, so a gateway can answer before asynchronous branches end.
    Raises :class:`StepFailed` or :class:`RevisitLimitExceeded`; every model call still running is
    cancelled and awaited first, also when the caller cancels this coroutine (e.g. its deadline).
    ``batch`` is required when the pipeline has batched steps (ValueError otherwise).
    """
    run = _Run(topology, call_model, dict(headers or {}), observer, on_output, batch)
    return await run.drive([(topology.pipeline.inputs_source, request)])


async def execute_external(
    topology: Topology,
    arrivals: Sequence[tuple[Source, Message]],
    *,
    call_model: ModelCaller,
    headers: Mapping[str, str] | None = None,
    observer: Observer | None = None,
    on_output: Callable[[Message], None] | None = None,
    batch: BatchSink | None = None,
) -> RunResult:
    """As :func:`execute`, fed with other pipelines' messages for one request (``spec.input``)."""
    for source, _ in arrivals:
        if source not in topology.external_sources:
            raise ValueError(f"pipeline {topology.pipeline.name} does not read {source}")
    run = _Run(topology, call_model, dict(headers or {}), observer, on_output, batch)
    return await run.drive(arrivals)


class _Run:
    """One request's run through a topology: starts each step whose inputs are ready, feeds its
    output to what follows, and ends with the pipeline's output, an error or nothing (no output)."""

    def __init__(
        self,
        topology: Topology,
        call_model: ModelCaller,
        headers: dict[str, str],
        observer: Observer | None,
        on_output: Callable[[Message], None] | None,
        batch: BatchSink | None,
    ) -> None:
        if topology.batched and batch is None:
            steps = ", ".join(sorted(topology.batched))
            name = topology.pipeline.name
            raise ValueError(f"pipeline {name} has batched steps ({steps}) but no batch sink")
        self._batch = batch
        self._topology = topology
        self._name = topology.pipeline.name
        self._call_model = call_model
        self._headers = headers
        self._observer = observer
        self._on_output = on_output
        self._state = RunState(topology)
        self._calls: dict[asyncio.Task[Message | None], str] = {}
        self._output: Message | None = None
        self._loop = asyncio.get_running_loop()

    def _now(self) -> float:
        return self._loop.time() * 1000

    async def drive(self, arrivals: Iterable[tuple[Source, Message]]) -> RunResult:
        try:
            for source, message in arrivals:
                if source == self._topology.pipeline.inputs_source:
                    self._record(source, message)
                self._handle(self._state.offer(source, message, self._now()))
            await self._until_quiet()
        finally:
            for task in self._calls:
                task.cancel()
            if self._calls:
                await asyncio.wait(self._calls)
            for task in self._calls:  # retrieved, so none is reported as "never retrieved"
                if not task.cancelled():
                    task.exception()
        return RunResult(self._name, self._output, self._state.runs)

    async def _until_quiet(self) -> None:
        while True:
            deadline = self._state.next_deadline()
            if not self._calls and deadline is None:
                flushed = self._state.flush()
                if not flushed:
                    return
                self._handle(flushed)
                continue
            timeout = None if deadline is None else max(0.0, (deadline - self._now()) / 1000)
            if self._calls:
                done, _ = await asyncio.wait(
                    self._calls, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                await asyncio.sleep(timeout or 0)
                done = set()
            for task in [t for t in self._calls if t in done]:  # in start order: deterministic
                self._completed(self._calls.pop(task), task)
            self._handle(self._state.expire(self._now()))

    def _completed(self, step: str, task: asyncio.Task[Message | None]) -> None:
        if task.cancelled():  # by the model caller itself: we cancel only on the way out
            raise StepFailed(
                self._name, step, f"pipeline {self._name}: step {step}: the model call was cancelled"
            )
        error = task.exception()
        if error is not None:
            failed = f"pipeline {self._name}: step {step} failed: {error}"
            raise StepFailed(self._name, step, failed) from error
        output = task.result() or ()
        source = Source(self._name, step, Direction.OUTPUTS)
        self._record(source, output)
        self._handle(self._state.offer(source, output, self._now()))

    def _handle(self, firings: Iterable[Firing]) -> None:
        work = deque(firings)
        while work:
            firing = work.popleft()
            node = firing.node
            if node.kind is NodeKind.OUTPUT:
                self._record(self._topology.pipeline.outputs_source, firing.message)
                if self._output is None:
                    self._output = firing.message
                    if self._on_output is not None:
                        self._on_output(firing.message)
                continue
            if node.kind is NodeKind.STEP and self._batch is not None and node.name in self._topology.batched:
                self._batch(node.name, firing.message, self._headers)
                continue
            if node.kind is NodeKind.INPUT:
                source = self._topology.pipeline.inputs_source
            else:
                source = Source(self._name, node.name, Direction.INPUTS)
            self._record(source, firing.message)
            work.extend(self._state.offer(source, firing.message, self._now()))
            if node.kind is NodeKind.STEP:
                call = self._call_model(node.name, firing.message, self._headers)
                self._calls[asyncio.create_task(call)] = node.name

    def _record(self, source: Source, message: Message) -> None:
        if self._observer is not None:
            self._observer.record(source, message)
