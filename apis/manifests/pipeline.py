"""Seldon ``Pipeline`` manifests to ``LoadPipelineRequest`` s (``pipeline load -f``).

Every field of the CRD (seldon-pipelines.md §2.1) in its YAML spelling, checked for structure and
types here; the rules between fields (references to steps that exist, cycles, bounds) belong to
the pipeline model (``pipelines.model.Pipeline.from_proto``), passed in as ``check`` because this
layer may not import it. Join types are the CRD's ``inner`` / ``outer`` / ``any``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from apis.manifests._common import (
    ManifestError,
    _bool,
    _fill_meta,
    _mapping,
    _parse_documents,
    _read,
    _reject_unknown,
    _resource,
    _string,
    _text,
    _type_name,
    _uint32,
)
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import validate_name

PIPELINE_KIND = "Pipeline"
_SPEC_FIELDS = frozenset({"input", "steps", "output", "dataflow", "allowCycles", "maxStepRevisits"})
_STEP_FIELDS = frozenset(
    {"name", "inputs", "joinWindowMs", "tensorMap", "triggers", "inputsJoinType", "triggersJoinType", "batch"}
)
_BATCH_FIELDS = frozenset({"size", "windowMs", "rolling"})
_INPUT_FIELDS = frozenset(
    {"externalInputs", "externalTriggers", "joinWindowMs", "joinType", "triggersJoinType", "tensorMap"}
)
_OUTPUT_FIELDS = frozenset({"steps", "joinWindowMs", "stepsJoin", "tensorMap"})
_JOINS = {"inner": 0, "outer": 1, "any": 2}
# The scheduler proto's field names, which a user copying from `pipeline status` may write.
_PROTO_SPELLINGS = {"inputsJoin": "inputsJoinType", "triggersJoin": "triggersJoinType"}
# Far above what the pipeline model accepts (which says so precisely); only keeps YAML bounded here.
_MAX_ENTRIES = 1_024

PipelineCheck = Callable[[scheduler_pb2.Pipeline], object]


def read_pipeline_requests(
    path: str, *, check: PipelineCheck | None = None
) -> list[scheduler_pb2.LoadPipelineRequest]:
    """Parse every Pipeline document in ``path``; raises ManifestFileError naming file and document.

    ``check`` (e.g. ``pipelines.model.Pipeline.from_proto``) runs on each pipeline; its
    ``InvalidResource`` is reported with the file and document too.
    """
    return parse_pipeline_requests(_read(path), source=path, check=check)


def parse_pipeline_requests(
    text: str, *, source: str, check: PipelineCheck | None = None
) -> list[scheduler_pb2.LoadPipelineRequest]:
    return _parse_documents(
        text,
        source=source,
        kind="Pipeline",
        build=pipeline_request,
        name_of=lambda request: request.pipeline.name,
        check=(lambda request: check(request.pipeline)) if check is not None else None,
    )


def pipeline_request(document: object) -> scheduler_pb2.LoadPipelineRequest:
    """One Pipeline resource to a LoadPipelineRequest, structure, types and names checked."""
    spec = _resource(document, PIPELINE_KIND, "pipeline load")
    metadata = _mapping(document, "metadata", required=True)  # type: ignore[arg-type]
    _reject_unknown(spec, _SPEC_FIELDS, prefix="spec.")
    pipeline = scheduler_pb2.Pipeline()
    meta = scheduler_pb2.MetaData()
    _fill_meta(meta, metadata)
    pipeline.name = validate_name(meta.name, kind="pipeline")
    if meta.HasField("kubernetesMeta"):
        pipeline.kubernetesMeta.CopyFrom(meta.kubernetesMeta)
    pipeline.steps.extend(_steps(spec))
    if "output" in spec:
        pipeline.output.CopyFrom(_output(_mapping(spec, "output", prefix="spec.", required=True)))
    if "input" in spec:
        pipeline.input.CopyFrom(_input(_mapping(spec, "input", prefix="spec.", required=True)))
    if "dataflow" in spec:
        dataflow = _mapping(spec, "dataflow", prefix="spec.", required=True)
        _reject_unknown(dataflow, frozenset({"cleanTopicsOnDelete"}), prefix="spec.dataflow.")
        pipeline.dataflowSpec.SetInParent()
        if "cleanTopicsOnDelete" in dataflow:
            pipeline.dataflowSpec.cleanTopicsOnDelete = _bool(
                dataflow, "cleanTopicsOnDelete", "spec.dataflow."
            )
    if "allowCycles" in spec:
        pipeline.allowCycles = _bool(spec, "allowCycles", "spec.")
    if "maxStepRevisits" in spec:
        pipeline.maxStepRevisits = _uint32(spec, "maxStepRevisits")
    return scheduler_pb2.LoadPipelineRequest(pipeline=pipeline)


def _steps(spec: Mapping[str, Any]) -> list[scheduler_pb2.PipelineStep]:
    raw = spec.get("steps")
    if raw is None or raw == []:
        raise ManifestError("spec.steps is missing: list at least one step ({name: <model>})")
    if not isinstance(raw, list):
        raise ManifestError(f"spec.steps must be a list of steps, got {_type_name(raw)}")
    if len(raw) > _MAX_ENTRIES:
        raise ManifestError(f"spec.steps has {len(raw)} entries; the limit is {_MAX_ENTRIES}")
    return [_step(item, f"spec.steps[{position}].") for position, item in enumerate(raw)]


def _step(item: object, prefix: str) -> scheduler_pb2.PipelineStep:
    if not isinstance(item, dict):
        raise ManifestError(f"{prefix[:-1]} must be a mapping with at least a name, got {_type_name(item)}")
    _renamed(item, prefix)
    _reject_unknown(item, _STEP_FIELDS, prefix=prefix)
    name = _string(item, "name", prefix)
    if not name:
        raise ManifestError(f"{prefix}name is missing (the model the step calls)")
    step = scheduler_pb2.PipelineStep(name=validate_name(name, kind=f"{prefix}name: step"))
    step.inputs.extend(_strings(item, "inputs", prefix))
    step.triggers.extend(_strings(item, "triggers", prefix))
    step.tensorMap.update(_string_map(item, "tensorMap", prefix))
    if "joinWindowMs" in item:
        step.joinWindowMs = _uint32(item, "joinWindowMs", prefix)
    if "inputsJoinType" in item:
        step.inputsJoin = _join(item, "inputsJoinType", prefix)  # type: ignore[assignment]
    if "triggersJoinType" in item:
        step.triggersJoin = _join(item, "triggersJoinType", prefix)  # type: ignore[assignment]
    if "batch" in item:
        batch = _mapping(item, "batch", prefix=prefix, required=True)
        _reject_unknown(batch, _BATCH_FIELDS, prefix=f"{prefix}batch.")
        step.batch.SetInParent()
        if "size" in batch:
            step.batch.size = _uint32(batch, "size", f"{prefix}batch.")
        if "windowMs" in batch:
            step.batch.windowMs = _uint32(batch, "windowMs", f"{prefix}batch.")
        if "rolling" in batch and _bool(batch, "rolling", f"{prefix}batch."):
            raise ManifestError(
                f"{prefix}batch.rolling: true cannot be loaded: the scheduler API's Batch carries "
                "size and windowMs only"
            )
    return step


def _output(output: Mapping[str, Any]) -> scheduler_pb2.PipelineOutput:
    prefix = "spec.output."
    _reject_unknown(output, _OUTPUT_FIELDS, prefix=prefix)
    message = scheduler_pb2.PipelineOutput()
    message.steps.extend(_strings(output, "steps", prefix))
    if "joinWindowMs" in output:
        message.joinWindowMs = _uint32(output, "joinWindowMs", prefix)
    if "stepsJoin" in output:
        message.stepsJoin = _join(output, "stepsJoin", prefix)  # type: ignore[assignment]
    message.tensorMap.update(_string_map(output, "tensorMap", prefix))
    return message


def _input(spec_input: Mapping[str, Any]) -> scheduler_pb2.PipelineInput:
    prefix = "spec.input."
    _renamed(spec_input, prefix)
    _reject_unknown(spec_input, _INPUT_FIELDS, prefix=prefix)
    message = scheduler_pb2.PipelineInput()
    message.externalInputs.extend(_strings(spec_input, "externalInputs", prefix))
    message.externalTriggers.extend(_strings(spec_input, "externalTriggers", prefix))
    if "joinWindowMs" in spec_input:
        message.joinWindowMs = _uint32(spec_input, "joinWindowMs", prefix)
    if "joinType" in spec_input:
        message.joinType = _join(spec_input, "joinType", prefix)  # type: ignore[assignment]
    if "triggersJoinType" in spec_input:
        message.triggersJoin = _join(spec_input, "triggersJoinType", prefix)  # type: ignore[assignment]
    message.tensorMap.update(_string_map(spec_input, "tensorMap", prefix))
    return message


def _renamed(item: Mapping[str, Any], prefix: str) -> None:
    for old, new in _PROTO_SPELLINGS.items():
        if old in item:
            raise ManifestError(f"unknown field {prefix}{old}: the resource spells it {prefix}{new}")


def _strings(parent: Mapping[str, Any], key: str, prefix: str) -> list[str]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError(f"{prefix}{key} must be a list of strings (references such as step.outputs)")
    if len(value) > _MAX_ENTRIES:
        raise ManifestError(f"{prefix}{key} has {len(value)} entries; the limit is {_MAX_ENTRIES}")
    return [_text(item, f"{prefix}{key}") for item in value]


def _string_map(parent: Mapping[str, Any], key: str, prefix: str) -> dict[str, str]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ManifestError(
            f"{prefix}{key} must be a mapping of tensor reference to new name, got {_type_name(value)}"
        )
    if len(value) > _MAX_ENTRIES:
        raise ManifestError(f"{prefix}{key} has {len(value)} entries; the limit is {_MAX_ENTRIES}")
    mapped: dict[str, str] = {}
    for ref, new in value.items():
        if not isinstance(ref, str) or not isinstance(new, str):
            raise ManifestError(
                f"{prefix}{key}: {ref!r}: {new!r}: keys and values must be strings "
                "(a tensor reference and the tensor's new name)"
            )
        mapped[_text(ref, f"{prefix}{key}")] = _text(new, f"{prefix}{key}")
    return mapped


def _join(parent: Mapping[str, Any], key: str, prefix: str) -> int:
    value = parent[key]
    if not isinstance(value, str) or value not in _JOINS:
        raise ManifestError(f"{prefix}{key} must be one of {', '.join(_JOINS)}, got {value!r}")
    return _JOINS[value]
