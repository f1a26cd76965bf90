"""Domain → API status messages (the only place that knows both shapes)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from google.protobuf import timestamp_pb2

from apis.mlops.scheduler import scheduler_pb2
from experiments.model import Experiment

if TYPE_CHECKING:
    from scheduler.experiments import Status as ExperimentState
from scheduler.server_scaling import ScalingRequest
from scheduler.state import ModelRecord, ModelVersion, ReplicaState, Server

_ReplicaEnum = scheduler_pb2.ModelReplicaStatus.ModelReplicaState
_ModelEnum = scheduler_pb2.ModelStatus.ModelState


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def version_status(version: ModelVersion) -> scheduler_pb2.ModelVersionStatus:
    available = len(version.replicas_in(ReplicaState.Available))
    unavailable = len(
        version.replicas_in(
            ReplicaState.LoadRequested, ReplicaState.Loading, ReplicaState.LoadFailed, ReplicaState.Loaded
        )
    )
    status = scheduler_pb2.ModelVersionStatus(
        version=version.number,
        serverName=version.server,
        state=scheduler_pb2.ModelStatus(
            state=_ModelEnum.Value(version.state.value),
            reason=version.reason,
            availableReplicas=available,
            unavailableReplicas=unavailable,
            lastChangeTimestamp=_timestamp(version.timestamp),
        ),
        modelDefn=version.spec,
    )
    if version.spec.meta.HasField("kubernetesMeta"):
        status.kubernetesMeta.CopyFrom(version.spec.meta.kubernetesMeta)
    for idx, replica in version.replicas.items():
        status.modelReplicaState[idx].CopyFrom(
            scheduler_pb2.ModelReplicaStatus(
                state=_ReplicaEnum.Value(replica.state.value),
                reason=replica.reason,
                lastChangeTimestamp=_timestamp(replica.timestamp),
            )
        )
    return status


def model_status(record: ModelRecord, *, all_versions: bool) -> scheduler_pb2.ModelStatusResponse:
    versions = record.versions if all_versions else record.versions[-1:]
    return scheduler_pb2.ModelStatusResponse(
        modelName=record.name,
        versions=[version_status(v) for v in versions],
        deleted=record.deleted,
        timestamp=time.time_ns(),
        operation=(
            scheduler_pb2.ModelStatusResponse.ModelDelete
            if record.deleted
            else scheduler_pb2.ModelStatusResponse.ModelCreate
        ),
    )


def deleted_model_status(name: str) -> scheduler_pb2.ModelStatusResponse:
    return scheduler_pb2.ModelStatusResponse(
        modelName=name,
        deleted=True,
        timestamp=time.time_ns(),
        operation=scheduler_pb2.ModelStatusResponse.ModelDelete,
    )


def server_status(server: Server, loaded_by_replica: dict[int, int]) -> scheduler_pb2.ServerStatusResponse:
    connected = [r for r in server.replicas.values() if r.connected]
    return scheduler_pb2.ServerStatusResponse(
        type=scheduler_pb2.ServerStatusResponse.StatusUpdate,
        serverName=server.name,
        resources=[
            scheduler_pb2.ServerReplicaResources(
                replicaIdx=r.idx,
                totalMemoryBytes=r.config.memoryBytes,
                availableMemoryBytes=r.free_memory,
                numLoadedModels=loaded_by_replica.get(r.idx, 0),
                overCommitPercentage=r.config.overCommitPercentage,
            )
            for r in sorted(server.replicas.values(), key=lambda r: r.idx)
        ],
        expectedReplicas=server.expected_replicas,
        availableReplicas=len(connected),
        numLoadedModelReplicas=sum(loaded_by_replica.values()),
    )


def scaling_request(request: ScalingRequest, server: Server | None) -> scheduler_pb2.ServerStatusResponse:
    """A ScalingRequest: the replica count the scheduler asks the controller for, and why."""
    response = scheduler_pb2.ServerStatusResponse(
        type=scheduler_pb2.ServerStatusResponse.ScalingRequest,
        serverName=request.server,
        expectedReplicas=request.replicas,
        scalingReason=request.reason,
    )
    if server is not None:
        response.availableReplicas = sum(1 for r in server.replicas.values() if r.connected)
    return response


def experiment_status(
    experiment: Experiment, current: ExperimentState
) -> scheduler_pb2.ExperimentStatusResponse:
    response = scheduler_pb2.ExperimentStatusResponse(
        experimentName=experiment.name,
        active=current.active,
        candidatesReady=current.candidates_ready,
        mirrorReady=current.mirror_ready,
        statusDescription=current.description,
    )
    if experiment.namespace or experiment.generation:
        response.kubernetesMeta.namespace = experiment.namespace
        response.kubernetesMeta.generation = experiment.generation
    return response
