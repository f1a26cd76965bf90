"""A pipeline as meshserve holds it: validated once at the edge, immutable afterwards.

``Pipeline.from_proto`` is the only way in from the wire (Seldon's ``scheduler.Pipeline``): it
parses each field into its part (:mod:`pipelines.validation`: every reference parsed and
normalised as the reference scheduler does, a bare ``m`` is ``m.outputs``, seldon-pipelines.md
§2.4; every bound checked), then checks the graph (every referenced step exists, tensorMap keys
match an input, nothing reads a batched step, cycles only with ``allowCycles``), and raises
:class:`apis.validation.InvalidResource` with a message naming the pipeline, the field and what is
wrong. Nothing is built partially: a bad pipeline changes nothing.

Steps are kept sorted by name, as the reference's status shows them, so ``to_proto`` is the
normalised resource and ``from_proto(p.to_proto()) == p``. Rules that span pipelines (pipelines
reading each other through ``spec.input``; the reference does not detect cycles between them,
§4.8) belong to whoever knows every pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from apis.limits import MAX_GENERATION, MAX_RESOURCE_BYTES
from apis.mlops.scheduler import scheduler_pb2
from apis.names import PIPELINE_SUFFIX
from apis.validation import InvalidResource, validate_name
from pipelines.graph import find_cycle
from pipelines.parts import Input, Output, Step
from pipelines.references import Direction, Reference, Source
from pipelines.validation import check_tensor_map, parse_input, parse_output, parse_step

MAX_STEPS = 256
MAX_STEP_REVISITS = 10_000
MAX_UID_LENGTH = 64


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One version of a pipeline as the engine runs it: steps, input and output stages, limits;
    read and checked from Seldon's proto (:meth:`from_proto`), written back (:meth:`to_proto`)."""

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
        steps = tuple(sorted((parse_step(name, s) for s in message.steps), key=lambda s: s.name))
        output = parse_output(name, message.output) if message.HasField("output") else None
        input_ = parse_input(name, message.input) if message.HasField("input") else None
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
        check_tensor_map(pipeline.name, mapped, step.tensor_map, pipeline.inputs_of(step))
        edges[step.name] = {
            r.source.step for r in (*step.inputs, *step.triggers) if r.source.step is not None
        }
    if pipeline.output is not None:
        _check_known(pipeline, "output steps", pipeline.output.steps, known)
        out = pipeline.output
        _check_known(pipeline, "output tensorMap", [k for k, _ in out.tensor_map.entries], known)
        check_tensor_map(pipeline.name, "output tensorMap", out.tensor_map, out.steps)
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
