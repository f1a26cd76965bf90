"""Seldon ``Experiment`` manifests to ``StartExperimentRequest`` s (``experiment start -f``)."""

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
    _type_name,
    _uint32,
)
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import validate_name

EXPERIMENT_KIND = "Experiment"
_EXPERIMENT_SPEC_FIELDS = frozenset({"default", "candidates", "mirror", "resourceType", "config"})
_RESOURCE_TYPES = {"model": scheduler_pb2.MODEL, "pipeline": scheduler_pb2.PIPELINE}
# Older Seldon samples spelled a candidate's name "modelName"; say so instead of just "unknown".
_RENAMED = {"modelName": "name"}


ExperimentCheck = Callable[[scheduler_pb2.Experiment], object]


def read_experiment_requests(
    path: str, *, check: ExperimentCheck | None = None
) -> list[scheduler_pb2.StartExperimentRequest]:
    """Parse every Experiment document in ``path``; raises ManifestFileError naming file and document.

    ``check`` (e.g. ``experiments.model.Experiment.from_proto``, which this layer may not import)
    runs on each experiment; its ``InvalidResource`` is reported with the file and document too.
    """
    return parse_experiment_requests(_read(path), source=path, check=check)


def parse_experiment_requests(
    text: str, *, source: str, check: ExperimentCheck | None = None
) -> list[scheduler_pb2.StartExperimentRequest]:
    return _parse_documents(
        text,
        source=source,
        kind="Experiment",
        build=experiment_request,
        name_of=lambda request: request.experiment.name,
        check=(lambda request: check(request.experiment)) if check is not None else None,
    )


def experiment_request(document: object) -> scheduler_pb2.StartExperimentRequest:
    """One Experiment resource to a StartExperimentRequest, structure and names checked.

    The rules between fields (default among the candidates, weights not all zero, mirror percent)
    belong to the experiment model (``experiments.model``), which the scheduler applies.
    """
    spec = _resource(document, EXPERIMENT_KIND, "experiment start")
    metadata = _mapping(document, "metadata", required=True)  # type: ignore[arg-type]
    _reject_unknown(spec, _EXPERIMENT_SPEC_FIELDS, prefix="spec.")
    experiment = scheduler_pb2.Experiment()
    meta = scheduler_pb2.MetaData()
    _fill_meta(meta, metadata)
    experiment.name = validate_name(meta.name, kind="experiment")
    if meta.HasField("kubernetesMeta"):
        experiment.kubernetesMeta.CopyFrom(meta.kubernetesMeta)
    default = _string(spec, "default", "spec.")
    if default is not None:
        experiment.default = validate_name(default, kind="spec.default: model")
    experiment.candidates.extend(_experiment_candidates(spec))
    if "mirror" in spec:
        mirror = _mapping(spec, "mirror", prefix="spec.", required=True)
        _reject_unknown(mirror, frozenset({"name", "percent"}), prefix="spec.mirror.")
        name = _string(mirror, "name", "spec.mirror.")
        if not name:
            raise ManifestError("spec.mirror.name is missing")
        experiment.mirror.name = validate_name(name, kind="spec.mirror: model")
        if "percent" not in mirror:
            raise ManifestError("spec.mirror.percent is missing (1..100 of the requests to copy)")
        experiment.mirror.percent = _uint32(mirror, "percent", "spec.mirror.")
    resource_type = _string(spec, "resourceType", "spec.")
    if resource_type is not None:
        if resource_type not in _RESOURCE_TYPES:
            raise ManifestError(
                f"spec.resourceType {resource_type!r} is unknown; use one of: {', '.join(_RESOURCE_TYPES)}"
            )
        experiment.resourceType = _RESOURCE_TYPES[resource_type]
    if "config" in spec:
        config = _mapping(spec, "config", prefix="spec.", required=True)
        _reject_unknown(config, frozenset({"stickySessions"}), prefix="spec.config.")
        experiment.config.SetInParent()
        if "stickySessions" in config:
            experiment.config.stickySessions = _bool(config, "stickySessions", "spec.config.")
    return scheduler_pb2.StartExperimentRequest(experiment=experiment)


def _experiment_candidates(spec: Mapping[str, Any]) -> list[scheduler_pb2.ExperimentCandidate]:
    raw = spec.get("candidates")
    if raw is None or raw == []:
        raise ManifestError("spec.candidates is missing: list at least one {name, weight}")
    if not isinstance(raw, list):
        raise ManifestError(f"spec.candidates must be a list of {{name, weight}}, got {_type_name(raw)}")
    candidates = []
    for position, item in enumerate(raw):
        prefix = f"spec.candidates[{position}]."
        if not isinstance(item, dict):
            raise ManifestError(
                f"{prefix[:-1]} must be a mapping with name and weight, got {_type_name(item)}"
            )
        for old, new in _RENAMED.items():
            if old in item:
                raise ManifestError(f"unknown field {prefix}{old}: use {prefix}{new}")
        _reject_unknown(item, frozenset({"name", "weight"}), prefix=prefix)
        name = _string(item, "name", prefix)
        if not name:
            raise ManifestError(f"{prefix}name is missing")
        if "weight" not in item:
            raise ManifestError(f"{prefix}weight is missing (a relative share, e.g. 50)")
        candidates.append(
            scheduler_pb2.ExperimentCandidate(
                name=validate_name(name, kind=f"{prefix[:-1]}: model"), weight=_uint32(item, "weight", prefix)
            )
        )
    return candidates
