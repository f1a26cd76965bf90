"""Pipeline records as the scheduler keeps them, and their one wire shape (pure, no I/O).

A record is a pipeline name with its versions, oldest first; each version is a validated
:class:`pipelines.model.Pipeline` (its ``uid`` and ``version`` given by the scheduler) with the
state of seldon-pipelines.md §8. The wire shape is Seldon's own ``PipelineStatusResponse``: the
status RPCs answer with it, and the store persists it (so a stored record reads back through the
same validation as a loaded one).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf import timestamp_pb2

from apis.mlops.scheduler import scheduler_pb2
from pipelines.model import Pipeline

_StatusEnum = scheduler_pb2.PipelineVersionState.PipelineStatus
_Operation = scheduler_pb2.PipelineStatusResponse


class PipelineStatus(StrEnum):
    """A version's state, spelled as the proto enum (seldon-pipelines.md §2.2)."""

    PipelineStatusUnknown = "PipelineStatusUnknown"
    PipelineCreate = "PipelineCreate"  # accepted; no dataflow engine has it yet
    PipelineCreating = "PipelineCreating"  # sent to the engines; none confirmed yet
    PipelineReady = "PipelineReady"  # every connected engine runs it
    PipelineFailed = "PipelineFailed"  # an engine could not run it (reason says which and why)
    PipelineTerminate = "PipelineTerminate"  # unload accepted
    PipelineTerminating = "PipelineTerminating"  # engines told to stop it
    PipelineTerminated = "PipelineTerminated"  # no engine runs it any more (final)
    PipelineRebalancing = "PipelineRebalancing"  # some engines run it, others are starting it


@dataclass
class PipelineVersion:
    pipeline: Pipeline  # carries its version number and uid
    status: PipelineStatus = PipelineStatus.PipelineCreate
    reason: str = ""
    timestamp: float = field(default_factory=time.time)
    models_ready: bool = False  # derived from the core's models; never persisted

    @property
    def number(self) -> int:
        return self.pipeline.version

    def set(self, status: PipelineStatus, reason: str, *, now: float | None = None) -> bool:
        """Change the state; True if it changed (the timestamp moves only then)."""
        if (status, reason) == (self.status, self.reason):
            return False
        self.status, self.reason = status, reason
        self.timestamp = time.time() if now is None else now
        return True


@dataclass
class PipelineRecord:
    name: str
    versions: list[PipelineVersion]
    deleted: bool = False  # unloaded: its status stays queryable (§8.2.6)

    @property
    def latest(self) -> PipelineVersion:
        return self.versions[-1]


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def version_state(version: PipelineVersion) -> scheduler_pb2.PipelineWithState:
    return scheduler_pb2.PipelineWithState(
        pipeline=version.pipeline.to_proto(),
        state=scheduler_pb2.PipelineVersionState(
            pipelineVersion=version.number,
            status=_StatusEnum.Value(version.status.value),
            reason=version.reason,
            lastChangeTimestamp=_timestamp(version.timestamp),
            modelsReady=version.models_ready,
        ),
    )


def pipeline_status(record: PipelineRecord, *, all_versions: bool) -> scheduler_pb2.PipelineStatusResponse:
    versions = record.versions if all_versions else record.versions[-1:]
    return scheduler_pb2.PipelineStatusResponse(
        pipelineName=record.name,
        versions=[version_state(v) for v in versions],
        timestamp=time.time_ns(),
        operation=_Operation.PipelineDelete if record.deleted else _Operation.PipelineCreate,
    )


def encode_pipeline(record: PipelineRecord) -> str:
    message = pipeline_status(record, all_versions=True)
    message.ClearField("timestamp")  # when it was sent, which a stored record is not
    return base64.b64encode(message.SerializeToString(deterministic=True)).decode("ascii")


def decode_pipeline(name: str, text: str) -> PipelineRecord:
    message = scheduler_pb2.PipelineStatusResponse.FromString(base64.b64decode(text, validate=True))
    if message.pipelineName != name or not message.versions:
        raise ValueError(f"record of pipeline {name} names {message.pipelineName!r} with no versions")
    versions = []
    for item in message.versions:
        state = item.state
        versions.append(
            PipelineVersion(
                Pipeline.from_proto(item.pipeline),
                PipelineStatus(_StatusEnum.Name(state.status)),
                state.reason,
                state.lastChangeTimestamp.ToNanoseconds() / 1e9,
            )
        )
    if [v.number for v in versions] != sorted({v.number for v in versions}):
        raise ValueError(f"versions of pipeline {name} are not increasing")
    return PipelineRecord(name, versions, deleted=message.operation == _Operation.PipelineDelete)


def deleted_pipeline_status(name: str) -> scheduler_pb2.PipelineStatusResponse:
    """What a status stream sends for a pipeline whose record is gone (evicted after unload)."""
    return scheduler_pb2.PipelineStatusResponse(
        pipelineName=name, timestamp=time.time_ns(), operation=_Operation.PipelineDelete
    )
