"""A pipeline's fields read from the wire, one at a time: each parsed into its part and checked.

:func:`parse_step`, :func:`parse_output` and :func:`parse_input` turn Seldon's proto messages into
:mod:`pipelines.parts`, parsing every reference (:mod:`pipelines.references`), bounding every list,
map and window, and raising :class:`apis.validation.InvalidResource` naming the pipeline, the field
and what is wrong. The checks that need the whole pipeline (the graph) are
:meth:`pipelines.model.Pipeline.from_proto`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource, validate_name
from pipelines.parts import MAX_BATCH_SIZE, Batch, Input, JoinType, Output, Step, TensorMap
from pipelines.references import Reference, parse_external_reference, parse_reference
from pipelines.tensors import InvalidTensor, check_tensor_name

MAX_REFERENCES = 64  # inputs, triggers, output steps, external inputs or triggers of one node
MAX_TENSOR_MAP = 256  # entries of one tensorMap
MAX_JOIN_WINDOW_MS = 600_000  # ten minutes: a join holds every partial request that long


def parse_step(pipeline: str, message: scheduler_pb2.PipelineStep) -> Step:
    """One step, its references normalised; whether the steps it reads exist is the graph's check."""
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


def parse_output(pipeline: str, message: scheduler_pb2.PipelineOutput) -> Output:
    """The output stage: assembled from steps only, so it names at least one."""
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


def parse_input(pipeline: str, message: scheduler_pb2.PipelineInput) -> Input:
    """The input stage (``spec.input``): other pipelines' data, joined into this one's inputs."""
    inputs = _references(pipeline, message.externalInputs, "input externalInputs", external=True)
    triggers = _references(pipeline, message.externalTriggers, "input externalTriggers", external=True)
    if not inputs:
        raise InvalidResource(
            f"pipeline {pipeline}: input has no externalInputs; name the pipelines (or their steps) to read"
        )
    _no_duplicates(pipeline, "input", inputs, triggers)
    tensor_map = _tensor_map(pipeline, message.tensorMap, "input tensorMap", external=True)
    check_tensor_map(pipeline, "input tensorMap", tensor_map, inputs)
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


def check_tensor_map(pipeline: str, where: str, tensor_map: TensorMap, inputs: Sequence[Reference]) -> None:
    """Every key must be a tensor of something the node reads: anything else is a typo."""
    for key, _ in tensor_map.entries:
        if not any(r.source == key.source and r.tensor in (None, key.tensor) for r in inputs):
            listed = ", ".join(r.text(pipeline) for r in inputs)
            raise InvalidResource(
                f"pipeline {pipeline}: {where}: key {key.text(pipeline)!r} matches none of the inputs "
                f"({listed})"
            )
