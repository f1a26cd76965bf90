"""A pipeline as meshserve holds it: validated once at the edge, immutable afterwards.

``Pipeline.from_proto`` is the only way in from the wire (Seldon's ``scheduler.Pipeline``): it
parses every reference (:mod:`pipelines.references`), normalises them as the reference scheduler
does (a bare ``m`` is ``m.outputs``; seldon-pipelines.md §2.4), checks the graph (every referenced
step exists, tensorMap keys match an input, cycles only with ``allowCycles``) and every bound, and
raises :class:`apis.validation.InvalidResource` with a message naming the pipeline, the field and
what is wrong. Nothing is built partially: a bad pipeline changes nothing.

Steps are kept sorted by name, as the reference's status shows them, so ``to_proto`` is the
normalised resource and ``from_proto(p.to_proto()) == p``. Rules that span pipelines (pipelines
reading each other through ``spec.input``; the reference does not detect cycles between them,
§4.8) belong to whoever knows every pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from apis.limits import MAX_GENERATION, MAX_RESOURCE_BYTES
from apis.mlops.scheduler import scheduler_pb2
from apis.names import PIPELINE_SUFFIX
from apis.validation import InvalidResource, validate_name
from pipelines.graph import find_cycle
from pipelines.references import Direction, Reference, Source, parse_external_reference, parse_reference
from pipelines.tensors import InvalidTensor, check_tensor_name

MAX_STEPS = 256
MAX_REFERENCES = 64  # inputs, triggers, output steps, external inputs or triggers of one node
MAX_TENSOR_MAP = 256  # entries of one tensorMap
MAX_JOIN_WINDOW_MS = 600_000  # ten minutes: a join holds every partial request that long
MAX_BATCH_SIZE = 10_000
MAX_STEP_REVISITS = 10_000
MAX_UID_LENGTH = 64


class JoinType(StrEnum):
    """How a node combines several inputs (or triggers): the CRD's spelling, proto values 0..2."""

    INNER = "inner"  # every reference must have data
    OUTER = "outer"  # whatever arrived when the join window ends
    ANY = "any"  # the first reference with data

    @classmethod
    def from_proto(cls, value: int, *, where: str) -> JoinType:
        try:
            return _JOINS[value]
        except KeyError:
            raise InvalidResource(f"{where} {value} is unknown (use INNER=0, OUTER=1 or ANY=2)") from None

    def to_proto(self) -> int:
        return _JOINS_BACK[self]


_JOINS = {0: JoinType.INNER, 1: JoinType.OUTER, 2: JoinType.ANY}
_JOINS_BACK = {join: value for value, join in _JOINS.items()}


@dataclass(frozen=True, slots=True)
class TensorMap:
    """``tensorMap``: a full tensor reference to the name the consumer sees; others keep theirs."""

    entries: tuple[tuple[Reference, str], ...] = ()

    def name_for(self, reference: Reference, name: str) -> str:
        """The name tensor ``name`` of ``reference``'s source gets (``reference`` may be whole)."""
        wanted = reference.of_tensor(name)
        return next((new for key, new in self.entries if key == wanted), name)

    def text(self, pipeline: str) -> dict[str, str]:
        return {key.text(pipeline): new for key, new in self.entries}


@dataclass(frozen=True, slots=True)
class Batch:
    size: int | None = None
    window_ms: int | None = None
    # The CRD and chainer.proto have ``rolling``; the scheduler API's Batch does not carry it, so a
    # pipeline loaded through the scheduler never has it set (apis.manifests refuses rolling: true).
    rolling: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    name: str  # also the model it calls
    inputs: tuple[Reference, ...] = ()  # as written, normalised; () means the pipeline's inputs
    triggers: tuple[Reference, ...] = ()
    tensor_map: TensorMap = field(default_factory=TensorMap)
    inputs_join: JoinType = JoinType.INNER
    triggers_join: JoinType = JoinType.INNER
    join_window_ms: int | None = None
    batch: Batch | None = None


@dataclass(frozen=True, slots=True)
class Output:
    steps: tuple[Reference, ...]
    steps_join: JoinType = JoinType.INNER
    join_window_ms: int = 0
    tensor_map: TensorMap = field(default_factory=TensorMap)


@dataclass(frozen=True, slots=True)
class Input:
    external_inputs: tuple[Reference, ...] = ()
    external_triggers: tuple[Reference, ...] = ()
    join_type: JoinType = JoinType.INNER
    triggers_join: JoinType = JoinType.INNER
    join_window_ms: int | None = None
    tensor_map: TensorMap = field(default_factory=TensorMap)


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]  # sorted by name
    output: Output | None = None
    input: Input | None = None
    allow_cycles: bool = False
    max_step_revisits: int = 0
    clean_topics_on_delete: bool = False
    uid: str = ""
    version: int = 0
    namespace: str = ""
    generation: int = 0

    @property
    def route_name(self) -> str:
        """What callers put in ``seldon-model``: ``<name>.pipeline``."""
        return self.name + PIPELINE_SUFFIX

    @property
    def inputs_source(self) -> Source:
        return Source(self.name, None, Direction.INPUTS)

    @property
    def outputs_source(self) -> Source:
        return Source(self.name, None, Direction.OUTPUTS)

    @property
    def models(self) -> frozenset[str]:
        """The models the pipeline calls (one per step: a step is named after its model)."""
        return frozenset(step.name for step in self.steps)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def inputs_of(self, step: Step) -> tuple[Reference, ...]:
        """A step's inputs; a step that lists none reads the pipeline's inputs (§3)."""
        return step.inputs or (Reference(self.inputs_source),)

    @classmethod
    def from_proto(cls, message: scheduler_pb2.Pipeline) -> Pipeline:
        name = validate_name(message.name, kind="pipeline")
        size = message.ByteSize()
        if size > MAX_RESOURCE_BYTES:
            raise InvalidResource(
                f"pipeline {name} is {size} bytes serialized; the limit is {MAX_RESOURCE_BYTES} bytes"
            )
        if len(message.uid) > MAX_UID_LENGTH or not message.uid.isprintable():
            raise InvalidResource(
                f"pipeline {name}: uid must be at most {MAX_UID_LENGTH} printable characters"
            )
        if not message.steps:
            raise InvalidResource(f"pipeline {name} has no steps")
        if len(message.steps) > MAX_STEPS:
            raise InvalidResource(f"pipeline {name} has {len(message.steps)} steps; the limit is {MAX_STEPS}")
        steps = tuple(sorted((_step(name, s) for s in message.steps), key=lambda s: s.name))
        output = _output(name, message.output) if message.HasField("output") else None
        input_ = _input(name, message.input) if message.HasField("input") else None
        if message.maxStepRevisits > MAX_STEP_REVISITS:
            raise InvalidResource(
                f"pipeline {name}: maxStepRevisits {message.maxStepRevisits} is above the limit "
                f"of {MAX_STEP_REVISITS}"
            )
        meta = message.kubernetesMeta
        if meta.namespace:
            validate_name(meta.namespace, kind="namespace")
        if not 0 <= meta.generation <= MAX_GENERATION:
            raise InvalidResource(
                f"pipeline {name}: generation ({meta.generation}) must be within 0..{MAX_GENERATION}"
            )
        pipeline = cls(
            name=name,
            steps=steps,
            output=output,
            input=input_,
            allow_cycles=message.allowCycles,
            max_step_revisits=message.maxStepRevisits,
            clean_topics_on_delete=message.dataflowSpec.cleanTopicsOnDelete,
            uid=message.uid,
            version=message.version,
            namespace=meta.namespace,
            generation=meta.generation,
        )
        _check_graph(pipeline)
        return pipeline

    def to_proto(self) -> scheduler_pb2.Pipeline:
        message = scheduler_pb2.Pipeline(
            name=self.name,
            uid=self.uid,
            version=self.version,
            steps=[self._step_proto(step) for step in self.steps],
            allowCycles=self.allow_cycles,
            maxStepRevisits=self.max_step_revisits,
        )
        if self.output is not None:
            out = self.output
            message.output.CopyFrom(
                scheduler_pb2.PipelineOutput(
                    steps=[r.text(self.name) for r in out.steps],
                    joinWindowMs=out.join_window_ms,
                    stepsJoin=out.steps_join.to_proto(),  # type: ignore[arg-type]
                    tensorMap=out.tensor_map.text(self.name),
                )
            )
        if self.input is not None:
            inp = self.input
            message.input.CopyFrom(
                scheduler_pb2.PipelineInput(
                    externalInputs=[r.text(self.name) for r in inp.external_inputs],
                    externalTriggers=[r.text(self.name) for r in inp.external_triggers],
                    joinType=inp.join_type.to_proto(),  # type: ignore[arg-type]
                    triggersJoin=inp.triggers_join.to_proto(),  # type: ignore[arg-type]
                    tensorMap=inp.tensor_map.text(self.name),
                )
            )
            if inp.join_window_ms is not None:
                message.input.joinWindowMs = inp.join_window_ms
        if self.clean_topics_on_delete:
            message.dataflowSpec.cleanTopicsOnDelete = True
        if self.namespace or self.generation:
            message.kubernetesMeta.namespace = self.namespace
            message.kubernetesMeta.generation = self.generation
        return message

    def _step_proto(self, step: Step) -> scheduler_pb2.PipelineStep:
        message = scheduler_pb2.PipelineStep(
            name=step.name,
            inputs=[r.text(self.name) for r in step.inputs],
            triggers=[r.text(self.name) for r in step.triggers],
            tensorMap=step.tensor_map.text(self.name),
            inputsJoin=step.inputs_join.to_proto(),  # type: ignore[arg-type]
            triggersJoin=step.triggers_join.to_proto(),  # type: ignore[arg-type]
        )
        if step.join_window_ms is not None:
            message.joinWindowMs = step.join_window_ms
        if step.batch is not None:
            message.batch.SetInParent()
            if step.batch.size is not None:
                message.batch.size = step.batch.size
            if step.batch.window_ms is not None:
                message.batch.windowMs = step.batch.window_ms
        return message


# -- one field at a time -----------------------------------------------------------------------------


def _step(pipeline: str, message: scheduler_pb2.PipelineStep) -> Step:
    name = validate_name(message.name, kind=f"pipeline {pipeline}: step")
    if name == pipeline:
        raise InvalidResource(
            f"pipeline {pipeline}: step {name} has the pipeline's own name, which would make "
            f"{name}.inputs ambiguous; rename the step or the pipeline"
        )
    where = f"step {name}"
    inputs = _references(pipeline, message.inputs, f"{where} inputs", external=False)
    triggers = _references(pipeline, message.triggers, f"{where} triggers", external=False)
    _no_duplicates(pipeline, where, inputs, triggers)
    batch = None
    if message.HasField("batch"):
        batch = Batch(
            size=message.batch.size if message.batch.HasField("size") else None,
            window_ms=message.batch.windowMs if message.batch.HasField("windowMs") else None,
        )
        if batch.size is not None and not 1 <= batch.size <= MAX_BATCH_SIZE:
            raise InvalidResource(
                f"pipeline {pipeline}: {where}: batch.size {batch.size} must be within 1..{MAX_BATCH_SIZE}"
            )
        if batch.window_ms is not None:
            _window(pipeline, f"{where}: batch.windowMs", batch.window_ms)
    return Step(
        name=name,
        inputs=inputs,
        triggers=triggers,
        tensor_map=_tensor_map(pipeline, message.tensorMap, f"{where} tensorMap", external=False),
        inputs_join=JoinType.from_proto(
            message.inputsJoin, where=f"pipeline {pipeline}: {where}: inputsJoin"
        ),
        triggers_join=JoinType.from_proto(
            message.triggersJoin, where=f"pipeline {pipeline}: {where}: triggersJoin"
        ),
        join_window_ms=(
            _window(pipeline, f"{where}: joinWindowMs", message.joinWindowMs)
            if message.HasField("joinWindowMs")
            else None
        ),
        batch=batch,
    )


def _output(pipeline: str, message: scheduler_pb2.PipelineOutput) -> Output:
    steps = _references(pipeline, message.steps, "output steps", external=False)
    if not steps:
        raise InvalidResource(f"pipeline {pipeline}: output has no steps; name the steps whose data answers")
    for position, reference in enumerate(steps):
        if reference.source.step is None:
            raise InvalidResource(
                f"pipeline {pipeline}: output steps[{position}]: {reference.text(pipeline)!r} is not a step; "
                "the output is assembled from steps"
            )
    _no_duplicates(pipeline, "output", steps, ())
    return Output(
        steps=steps,
        steps_join=JoinType.from_proto(message.stepsJoin, where=f"pipeline {pipeline}: output stepsJoin"),
        join_window_ms=_window(pipeline, "output joinWindowMs", message.joinWindowMs),
        tensor_map=_tensor_map(pipeline, message.tensorMap, "output tensorMap", external=False),
    )


def _input(pipeline: str, message: scheduler_pb2.PipelineInput) -> Input:
    inputs = _references(pipeline, message.externalInputs, "input externalInputs", external=True)
    triggers = _references(pipeline, message.externalTriggers, "input externalTriggers", external=True)
    if not inputs:
        raise InvalidResource(
            f"pipeline {pipeline}: input has no externalInputs; name the pipelines (or their steps) to read"
        )
    _no_duplicates(pipeline, "input", inputs, triggers)
    tensor_map = _tensor_map(pipeline, message.tensorMap, "input tensorMap", external=True)
    _check_tensor_map(pipeline, "input tensorMap", tensor_map, inputs)
    return Input(
        external_inputs=inputs,
        external_triggers=triggers,
        join_type=JoinType.from_proto(message.joinType, where=f"pipeline {pipeline}: input joinType"),
        triggers_join=JoinType.from_proto(
            message.triggersJoin, where=f"pipeline {pipeline}: input triggersJoin"
        ),
        join_window_ms=(
            _window(pipeline, "input joinWindowMs", message.joinWindowMs)
            if message.HasField("joinWindowMs")
            else None
        ),
        tensor_map=tensor_map,
    )


def _references(pipeline: str, texts: Sequence[str], where: str, *, external: bool) -> tuple[Reference, ...]:
    if len(texts) > MAX_REFERENCES:
        raise InvalidResource(
            f"pipeline {pipeline}: {where} has {len(texts)} entries; the limit is {MAX_REFERENCES}"
        )
    parse = parse_external_reference if external else parse_reference
    return tuple(parse(text, pipeline=pipeline, where=f"{where}[{i}]") for i, text in enumerate(texts))


def _tensor_map(pipeline: str, entries: Mapping[str, str], where: str, *, external: bool) -> TensorMap:
    if len(entries) > MAX_TENSOR_MAP:
        raise InvalidResource(
            f"pipeline {pipeline}: {where} has {len(entries)} entries; the limit is {MAX_TENSOR_MAP}"
        )
    parse = parse_external_reference if external else parse_reference
    mapped: list[tuple[Reference, str]] = []
    for key in sorted(entries):
        reference = parse(key, pipeline=pipeline, where=f"{where} key")
        if reference.tensor is None:
            raise InvalidResource(
                f"pipeline {pipeline}: {where}: key {key!r} names no tensor; a key is a full tensor "
                f"reference such as {reference.text(pipeline)}.OUTPUT0"
            )
        new = entries[key]
        try:
            if not new:
                raise InvalidTensor("the new name is empty")
            check_tensor_name(new)
        except InvalidTensor as exc:
            raise InvalidResource(f"pipeline {pipeline}: {where}: {key!r}: {exc}") from exc
        mapped.append((reference, new))
    return TensorMap(tuple(mapped))


def _window(pipeline: str, where: str, value: int) -> int:
    if value > MAX_JOIN_WINDOW_MS:
        raise InvalidResource(
            f"pipeline {pipeline}: {where} {value} is above the limit of {MAX_JOIN_WINDOW_MS} ms"
        )
    return value


def _no_duplicates(
    pipeline: str, where: str, inputs: tuple[Reference, ...], triggers: tuple[Reference, ...]
) -> None:
    for kind, references in (("inputs", inputs), ("triggers", triggers)):
        seen: set[Reference] = set()
        for reference in references:
            if reference in seen:
                raise InvalidResource(
                    f"pipeline {pipeline}: {where}: {reference.text(pipeline)!r} is listed twice in {kind}"
                )
            seen.add(reference)
    for reference in set(inputs) & set(triggers):
        raise InvalidResource(
            f"pipeline {pipeline}: {where}: {reference.text(pipeline)!r} is both an input and a trigger"
        )


# -- the graph ---------------------------------------------------------------------------------------


def _check_graph(pipeline: Pipeline) -> None:
    names = [step.name for step in pipeline.steps]
    for name in names:
        if names.count(name) > 1:
            raise InvalidResource(f"pipeline {pipeline.name}: step {name} is defined twice")
    known = set(names)
    edges: dict[str, set[str]] = {}
    for step in pipeline.steps:
        references = {"inputs": step.inputs, "triggers": step.triggers}
        for kind, listed in references.items():
            _check_known(pipeline, f"step {step.name} {kind}", listed, known)
        mapped = f"step {step.name} tensorMap"
        _check_known(pipeline, mapped, [k for k, _ in step.tensor_map.entries], known)
        _check_tensor_map(pipeline.name, mapped, step.tensor_map, pipeline.inputs_of(step))
        edges[step.name] = {
            r.source.step for r in (*step.inputs, *step.triggers) if r.source.step is not None
        }
    if pipeline.output is not None:
        _check_known(pipeline, "output steps", pipeline.output.steps, known)
        out = pipeline.output
        _check_known(pipeline, "output tensorMap", [k for k, _ in out.tensor_map.entries], known)
        _check_tensor_map(pipeline.name, "output tensorMap", out.tensor_map, out.steps)
    _check_batched_unread(pipeline)
    cycle = find_cycle(edges)
    if cycle is not None:
        shown = " -> ".join(reversed([*cycle, cycle[0]]))  # edges point upstream; show the data's way
        if not pipeline.allow_cycles:
            raise InvalidResource(
                f"pipeline {pipeline.name} has a cycle ({shown}); set allowCycles: true and "
                "maxStepRevisits to allow it"
            )
        if pipeline.max_step_revisits == 0:
            raise InvalidResource(
                f"pipeline {pipeline.name} has a cycle ({shown}) but maxStepRevisits is 0, so no step "
                f"could run twice; set maxStepRevisits (1..{MAX_STEP_REVISITS})"
            )


def _check_batched_unread(pipeline: Pipeline) -> None:
    """A batched step answers many requests at once, so no request's flow can wait for it (§4.6)."""
    batched = {step.name for step in pipeline.steps if step.batch is not None}
    if not batched:
        return
    readers = [
        (f"step {s.name}", (*s.inputs, *s.triggers, *(key for key, _ in s.tensor_map.entries)))
        for s in pipeline.steps
    ]
    if pipeline.output is not None:
        readers.append(("output steps", pipeline.output.steps))
    for where, references in readers:
        for reference in references:
            if reference.source.step in batched:
                raise InvalidResource(
                    f"pipeline {pipeline.name}: {where}: {reference.text(pipeline.name)!r} reads step "
                    f"{reference.source.step}, which has batch: a batched step is an asynchronous branch "
                    "(one call for many requests) whose output only lands on its model's output topic"
                )


def _check_known(pipeline: Pipeline, where: str, references: Iterable[Reference], known: set[str]) -> None:
    for reference in references:
        step = reference.source.step
        if step is not None and step not in known:
            steps = ", ".join(sorted(known))
            raise InvalidResource(
                f"pipeline {pipeline.name}: {where}: {reference.text(pipeline.name)!r} names step {step}, "
                f"which the pipeline does not have (its steps: {steps})"
            )


def _check_tensor_map(pipeline: str, where: str, tensor_map: TensorMap, inputs: Sequence[Reference]) -> None:
    """Every key must be a tensor of something the node reads: anything else is a typo."""
    for key, _ in tensor_map.entries:
        if not any(r.source == key.source and r.tensor in (None, key.tensor) for r in inputs):
            listed = ", ".join(r.text(pipeline) for r in inputs)
            raise InvalidResource(
                f"pipeline {pipeline}: {where}: key {key.text(pipeline)!r} matches none of the inputs "
                f"({listed})"
            )
