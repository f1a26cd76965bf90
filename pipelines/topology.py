"""The dataflow engine's core: which steps of a pipeline run, in which order, on which tensors.

It knows no transport. :class:`Topology` compiles a validated pipeline into its join points
(:class:`Node`: the steps and the pipeline's input and output stages) and who consumes which
source. :class:`RunState` is pure and synchronous: the join state of **one request** (one request
id, one Kafka key) through one topology. Feed it what arrived with :meth:`RunState.offer` (a
source, its message, the time in ms); it answers with the :class:`Firing` s that are now due: a
step to call with its assembled input tensors, the pipeline's inputs (from ``spec.input``) or its
output. :meth:`RunState.expire` closes join windows, :meth:`RunState.flush` says "nothing more
will arrive". The Kafka path drives it from consumed messages; :mod:`pipelines.executor` drives it
for one request to its end with async model calls.

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
  (:meth:`pipelines.executor.RunResult.require_output` turns that into :class:`NoOutput`). A
  failing model call fails the whole request (:class:`StepFailed`, naming the step); the other
  calls are cancelled.

- A step with ``batch`` is an asynchronous branch (§4.6, §4.7): its joined input goes to the
  ``batch`` hook (a :class:`pipelines.executor.BatchSink`, which gathers many requests' messages
  into one model call: :mod:`pipelines.batching`) and the run goes on without it; nothing reads its
  output within the pipeline (the model validation refuses such references), so it cannot hold up
  the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pipelines.model import Pipeline
from pipelines.parts import JoinType, Step, TensorMap
from pipelines.references import Reference, Source
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
