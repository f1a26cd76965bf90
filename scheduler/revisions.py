"""How a LoadModel changes a model's record: a first version, a new version, a rescale or nothing.

Pure functions over :mod:`scheduler.state`, no I/O, no hooks: the use cases (:mod:`scheduler.core`)
check the limits, then place what :func:`revise` says needs placing.
"""

from __future__ import annotations

from enum import Enum

from apis.mlops.scheduler import scheduler_pb2
from scheduler.autoscaling import carried_scale
from scheduler.state import ModelRecord, ModelVersion


class Revision(Enum):
    """What a LoadModel of a known model changed."""

    UNCHANGED = "unchanged"  # identical: loading twice is a no-op
    METADATA = "metadata"  # only the metadata: nothing to place, listeners are told
    PLACE = "place"  # a new version (spec changed) or a new deployment (rescale): place it


def normalised(model: scheduler_pb2.Model) -> scheduler_pb2.Model:
    copy = scheduler_pb2.Model()
    copy.CopyFrom(model)
    if not copy.HasField("deploymentSpec"):
        copy.deploymentSpec.replicas = 1
    return copy


def same_model_spec(current: scheduler_pb2.Model, new: scheduler_pb2.Model) -> bool:
    """Equal model specs, ignoring the runtime info the agent reported (as Seldon does)."""
    a, b = scheduler_pb2.ModelSpec(), scheduler_pb2.ModelSpec()
    a.CopyFrom(current.modelSpec)
    b.CopyFrom(new.modelSpec)
    a.ClearField("modelRuntimeInfo")
    b.ClearField("modelRuntimeInfo")
    return a == b


def new_record(model: scheduler_pb2.Model) -> ModelRecord:
    """A new model's record; its first version is numbered from the resource's generation, if any."""
    record = ModelRecord(model.meta.name)
    first = model.meta.kubernetesMeta.generation if model.meta.HasField("kubernetesMeta") else 0
    record.versions.append(ModelVersion(max(1, first), model))
    return record


def revise(record: ModelRecord, model: scheduler_pb2.Model) -> Revision:
    """Apply a (normalised) LoadModel to a known model's record and say what it changed."""
    latest = record.latest
    if record.deleted or not same_model_spec(latest.spec, model):
        scaled = None if record.deleted else _carried_scale(latest, model)
        record.deleted = False
        record.versions.append(ModelVersion(latest.number + 1, model, scaled_replicas=scaled))
        return Revision.PLACE
    if latest.spec.deploymentSpec != model.deploymentSpec:
        latest.scaled_replicas = _carried_scale(latest, model)
        latest.spec.deploymentSpec.CopyFrom(model.deploymentSpec)
        return Revision.PLACE
    if latest.spec.meta != model.meta:
        latest.spec.meta.CopyFrom(model.meta)
        return Revision.METADATA
    return Revision.UNCHANGED


def _carried_scale(current: ModelVersion, model: scheduler_pb2.Model) -> int | None:
    old, new = current.spec.deploymentSpec, model.deploymentSpec
    return carried_scale(current.scaled_replicas, old, new)
