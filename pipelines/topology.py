"""The dataflow engine's core: which steps of a pipeline run, in which order, on which tensors.

It knows no transport. Two layers:

- :class:`RunState` is pure and synchronous: the join state of **one request** (one request id, one
  Kafka key) through one :class:`Topology`. Feed it what arrived with :meth:`RunState.offer` (a
  source, its message, the time in ms); it answers with the :class:`Firing` s that are now due: a
  step to call with its assembled input tensors, the pipeline's inputs (from ``spec.input``) or its
  output. :meth:`RunState.expire` closes join windows, :meth:`RunState.flush` says "nothing more
  will arrive". The Kafka path drives it from consumed messages.
- :func:`execute` (and :func:`execute_external`) drives a RunState for one request to its end with
  an injected :class:`ModelCaller`: independent steps run concurrently, each step's request and
  response is reported to an optional :class:`Observer` in the order they happen (the messages the
  Kafka path writes to topics), and the pipeline output is handed to ``on_output`` the moment it
  exists, before asynchronous branches finish. The synchronous path (HTTP/gRPC, models called
  through Envoy) uses it as is; the Kafka path can too, with a caller that produces to
  ``model.<m>.inputs`` and awaits ``model.<m>.outputs``.

Semantics (seldon-pipelines.md §4; the choices where the reference is silent are in
docs/decisions/0013-pipeline-engine-transport-free.md):

- A *reference* has data when its source produced a message and, for a tensor reference, that
  message holds the tensor. An empty response is not forwarded (chainer ``passEmptyResponses``
  false), so a step whose model returns no tensors, or not the referenced one, stops that branch.
- Inputs are joined per ``inputsJoin``: ``inner`` fires once every input has data; ``any`` fires on
  each arrival with what has arrived; ``outer`` fires once every input has data, or when its join
  window (from the first arrival) ends, or when the request can receive nothing more, with whatever
  arrived. A window of 0 or unset puts no time bound on a join (the request's end does). ``inner``
  with a window drops data older than the window.
- Triggers gate a step the same way (``triggersJoin``) but their tensors are not passed on.
- Tensors are renamed by the consuming node's ``tensorMap``; the rest keep their names. A node's
  input message lists its references' tensors in the order the references are written.
- After a node fires its join state is cleared, so each loop iteration joins fresh data. Without
  ``allowCycles`` a node fires at most once per request (``any``: "forward the first input that
  arrives"; later arrivals are ignored); with it, a step may run ``1 + maxStepRevisits`` times and
  one more run fails the request (:class:`RevisitLimitExceeded`).
- The pipeline output fires at most once; a request with no output ends with ``output`` None
  (:meth:`RunResult.require_output` turns that into :class:`NoOutput`). A failing model call fails
  the whole request (:class:`StepFailed`, naming the step); the other calls are cancelled.

- A step with ``batch`` is an asynchronous branch (§4.6, §4.7): its joined input goes to the
  ``batch`` hook (a :class:`BatchSink`, which gathers many requests' messages into one model call:
  :mod:`pipelines.batching`) and the run goes on without it; nothing reads its output within the
  pipeline (the model validation refuses such references), so it cannot hold up the output.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from pipelines.model import JoinType, Pipeline, Step, TensorMap
from pipelines.references import Direction, Reference, Source
from pipelines.tensors import Message, find


class NodeKind(StrEnum):
    INPUT = "input"  # spec.input: other pipelines' data joined into this pipeline's inputs
    STEP = "step"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class Node:
    """One join point: a step, or the pipeline's input or output stage."""

    kind: NodeKind
    name: str  # the step (and model) name; "input" / "output" for the stages
    inputs: tuple[Reference, ...]
    triggers: tuple[Reference, ...] = ()
    inputs_join: JoinType = JoinType.INNER
    triggers_join: JoinType = JoinType.INNER
    window_ms: int | None = None  # None or 0: no time bound
    tensor_map: TensorMap = field(default_factory=TensorMap)

    def __str__(self) -> str:
        return f"step {self.name}" if self.kind is NodeKind.STEP else f"pipeline {self.kind}"


@dataclass(frozen=True, slots=True)
class Firing:
    node: Node
    message: Message  # the node's joined, renamed input tensors


class PipelineRunError(Exception):
    """A request through a pipeline failed; ``step`` names the step at fault, when one is."""

    def __init__(self, pipeline: str, step: str | None, message: str) -> None:
        super().__init__(message)
        self.pipeline = pipeline
        self.step = step


class StepFailed(PipelineRunError):
    """A step's model call raised; the request's flow stops there (§6.7)."""


class RevisitLimitExceeded(PipelineRunError):
    """A step would run more than ``1 + maxStepRevisits`` times for one request (§4.9)."""


class NoOutput(PipelineRunError):
    """The request ended without the pipeline's output (a branch stopped, a join never completed)."""


class Topology:
    """A validated pipeline compiled for execution: its nodes and who consumes which source."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.batched = frozenset(step.name for step in pipeline.steps if step.batch is not None)
        nodes: list[Node] = []
        if pipeline.input is not None:
            spec = pipeline.input
            nodes.append(
                Node(
                    NodeKind.INPUT,
                    "input",
                    spec.external_inputs,
                    spec.external_triggers,
                    spec.join_type,
                    spec.triggers_join,
                    spec.join_window_ms,
                    spec.tensor_map,
                )
            )
        nodes.extend(_step_node(pipeline, step) for step in pipeline.steps)
        if pipeline.output is not None:
            out = pipeline.output
            nodes.append(
                Node(
                    NodeKind.OUTPUT,
                    "output",
                    out.steps,
                    inputs_join=out.steps_join,
                    window_ms=out.join_window_ms,
                    tensor_map=out.tensor_map,
                )
            )
        self.nodes: tuple[Node, ...] = tuple(nodes)
        consumers: dict[Source, list[int]] = {}
        for index, node in enumerate(self.nodes):
            for reference in (*node.inputs, *node.triggers):
                listed = consumers.setdefault(reference.source, [])
                if index not in listed:
                    listed.append(index)
        self._consumers = {source: tuple(indexes) for source, indexes in consumers.items()}
        # Runs a node may make per request: one, plus the revisits a cyclic pipeline allows.
        self.max_runs = 1 + (pipeline.max_step_revisits if pipeline.allow_cycles else 0)

    @property
    def external_sources(self) -> frozenset[Source]:
        """Other pipelines' sources this pipeline reads (its input stage's, for the Kafka path)."""
        return frozenset(s for s in self._consumers if s.pipeline != self.pipeline.name)

    def consumers(self, source: Source) -> tuple[int, ...]:
        return self._consumers.get(source, ())


def _step_node(pipeline: Pipeline, step: Step) -> Node:
    return Node(
        NodeKind.STEP,
        step.name,
        pipeline.inputs_of(step),
        step.triggers,
        step.inputs_join,
        step.triggers_join,
        step.join_window_ms,
        step.tensor_map,
    )


@dataclass(slots=True)
class _Join:
    """What one node holds for the current request: per reference index, its tensors and time."""

    inputs: dict[int, tuple[Message, float]] = field(default_factory=dict)
    triggers: dict[int, float] = field(default_factory=dict)
    first_ms: float | None = None

    def clear(self) -> None:
        self.inputs.clear()
        self.triggers.clear()
        self.first_ms = None


class RunState:
    """The join state of one request through one topology. Not thread-safe; one owner drives it.

    Every method returns the firings now due, in a deterministic order (nodes in topology order).
    ``offer`` raises :class:`RevisitLimitExceeded` when a cyclic pipeline's step would run once too
    often; the state is then unusable (the request has failed).
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._joins = [_Join() for _ in topology.nodes]
        self._runs = [0 for _ in topology.nodes]

    @property
    def runs(self) -> dict[str, int]:
        """Step name -> times it fired (its model was called) so far, for the steps that did."""
        nodes = self.topology.nodes
        return {n.name: r for n, r in zip(nodes, self._runs, strict=True) if n.kind is NodeKind.STEP and r}

    def offer(self, source: Source, message: Message, now_ms: float) -> list[Firing]:
        """``source`` produced ``message``; an empty message is not forwarded (it stops the branch)."""
        if not message:
            return []
        due: list[Firing] = []
        for index in self.topology.consumers(source):
            node = self.topology.nodes[index]
            if self._exhausted(index):
                continue
            join = self._joins[index]
            arrived = False
            for position, reference in enumerate(node.inputs):
                if reference.source == source:
                    tensors = _contribution(reference, message, node.tensor_map)
                    if tensors:
                        join.inputs[position] = (tensors, now_ms)
                        arrived = True
            for position, reference in enumerate(node.triggers):
                if reference.source == source and (
                    reference.tensor is None or find(message, reference.tensor) is not None
                ):
                    join.triggers[position] = now_ms
                    arrived = True
            if not arrived:
                continue
            if join.first_ms is None:
                join.first_ms = now_ms
            self._drop_stale(node, join, now_ms)
            if self._ready(node, join, final=False):
                due.extend(self._fire(index))
        return due

    def expire(self, now_ms: float) -> list[Firing]:
        """Close the ``outer`` join windows that ended by ``now_ms``: fire with what arrived, or drop."""
        due: list[Firing] = []
        for index, node in enumerate(self.topology.nodes):
            join = self._joins[index]
            deadline = self._deadline(node, join)
            if deadline is not None and deadline <= now_ms:
                if self._ready(node, join, final=True):
                    due.extend(self._fire(index))
                else:
                    join.clear()
        return due

    def flush(self) -> list[Firing]:
        """Nothing more will arrive for this request: ``outer`` joins fire with what they hold."""
        due: list[Firing] = []
        for index, node in enumerate(self.topology.nodes):
            join = self._joins[index]
            if join.first_ms is None:
                continue
            if node.inputs_join is JoinType.OUTER and self._ready(node, join, final=True):
                due.extend(self._fire(index))
            else:
                join.clear()
        return due

    def next_deadline(self) -> float | None:
        """The earliest time (ms) at which :meth:`expire` has something to do, if any."""
        deadlines = [
            d
            for node, join in zip(self.topology.nodes, self._joins, strict=True)
            if (d := self._deadline(node, join)) is not None
        ]
        return min(deadlines, default=None)

    def _deadline(self, node: Node, join: _Join) -> float | None:
        if node.inputs_join is not JoinType.OUTER or not node.window_ms or join.first_ms is None:
            return None
        return join.first_ms + node.window_ms

    def _exhausted(self, index: int) -> bool:
        node = self.topology.nodes[index]
        limit = self.topology.max_runs if node.kind is NodeKind.STEP else 1
        # A cyclic pipeline's step is let through so that its extra run fails the request.
        cyclic = node.kind is NodeKind.STEP and self.topology.pipeline.allow_cycles
        return not cyclic and self._runs[index] >= limit

    def _drop_stale(self, node: Node, join: _Join, now_ms: float) -> None:
        if node.inputs_join is not JoinType.INNER or not node.window_ms:
            return
        oldest = now_ms - node.window_ms
        for position in [p for p, (_, at) in join.inputs.items() if at < oldest]:
            del join.inputs[position]
        for position in [p for p, at in join.triggers.items() if at < oldest]:
            del join.triggers[position]

    def _ready(self, node: Node, join: _Join, *, final: bool) -> bool:
        inputs = _joined(node.inputs_join, len(node.inputs), len(join.inputs), final=final)
        triggers = not node.triggers or _joined(
            node.triggers_join, len(node.triggers), len(join.triggers), final=final
        )
        return inputs and triggers

    def _fire(self, index: int) -> list[Firing]:
        node = self.topology.nodes[index]
        join = self._joins[index]
        message = tuple(t for position in sorted(join.inputs) for t in join.inputs[position][0])
        join.clear()
        runs = self._runs[index] + 1
        if node.kind is NodeKind.STEP and runs > self.topology.max_runs:
            pipeline = self.topology.pipeline
            raise RevisitLimitExceeded(
                pipeline.name,
                node.name,
                f"pipeline {pipeline.name}: step {node.name} would run a {_ordinal(runs)} time for one "
                f"request; maxStepRevisits {pipeline.max_step_revisits} allows {self.topology.max_runs} runs",
            )
        self._runs[index] = runs
        return [Firing(node, message)]


def _joined(join: JoinType, total: int, have: int, *, final: bool) -> bool:
    if join is JoinType.INNER:
        return have == total
    if join is JoinType.ANY:
        return have >= 1
    return have == total or (final and have >= 1)


def _contribution(reference: Reference, message: Message, tensor_map: TensorMap) -> Message:
    if reference.tensor is None:
        return tuple(t.renamed(tensor_map.name_for(reference, t.name)) for t in message)
    tensor = find(message, reference.tensor)
    if tensor is None:
        return ()
    return (tensor.renamed(tensor_map.name_for(reference, tensor.name)),)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# -- the async driver --------------------------------------------------------------------------------


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
