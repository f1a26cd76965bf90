"""The scheduler's in-memory domain: models, their versions and replica states, servers and replicas.

Plain dataclasses, mutated only by :class:`scheduler.core.Scheduler` on the event loop (no locks).
State names follow the proto enums by *name* (``ModelReplicaStatus.ModelReplicaState``,
``ModelStatus.ModelState``) so conversion at the API edge is a lookup.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from enum import StrEnum

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.names import versioned_name
from apis.routing import Endpoint


class ReplicaState(StrEnum):
    LoadRequested = "LoadRequested"
    Loading = "Loading"
    Loaded = "Loaded"
    LoadFailed = "LoadFailed"
    UnloadEnvoyRequested = "UnloadEnvoyRequested"
    UnloadRequested = "UnloadRequested"
    Unloading = "Unloading"
    Unloaded = "Unloaded"
    UnloadFailed = "UnloadFailed"
    Available = "Available"
    LoadedUnavailable = "LoadedUnavailable"
    Draining = "Draining"

    @property
    def serves(self) -> bool:
        """Loaded on the model server, so Envoy may route to it."""
        return self in _SERVING

    @property
    def active(self) -> bool:
        """Occupies (or is about to occupy) the replica."""
        return self in _ACTIVE


_SERVING = frozenset(
    {ReplicaState.Loaded, ReplicaState.Available, ReplicaState.LoadedUnavailable, ReplicaState.Draining}
)
_ACTIVE = _SERVING | {
    ReplicaState.LoadRequested,
    ReplicaState.Loading,
    ReplicaState.UnloadEnvoyRequested,
    ReplicaState.UnloadRequested,
    ReplicaState.Unloading,
}


class ModelState(StrEnum):
    ModelStateUnknown = "ModelStateUnknown"
    ModelProgressing = "ModelProgressing"
    ModelAvailable = "ModelAvailable"
    ModelFailed = "ModelFailed"
    ModelTerminating = "ModelTerminating"
    ModelTerminated = "ModelTerminated"
    ModelTerminateFailed = "ModelTerminateFailed"
    ScheduleFailed = "ScheduleFailed"
    ModelScaledDown = "ModelScaledDown"


@dataclass
class ReplicaStatus:
    state: ReplicaState
    reason: str = ""
    timestamp: float = field(default_factory=time.time)


@dataclass
class ModelVersion:
    number: int
    spec: scheduler_pb2.Model
    server: str = ""
    replicas: dict[int, ReplicaStatus] = field(default_factory=dict)
    state: ModelState = ModelState.ModelProgressing
    reason: str = ""
    timestamp: float = field(default_factory=time.time)
    # Why placement failed last time ("" once placed); shown as the ScheduleFailed reason.
    schedule_error: str = ""
    # The autoscaler's replica count (None: the spec's). Kept beside the spec, never in it.
    scaled_replicas: int | None = None

    @property
    def name(self) -> str:
        return self.spec.meta.name

    @property
    def versioned_name(self) -> str:
        return versioned_name(self.name, self.number)

    @property
    def desired_replicas(self) -> int:
        if self.scaled_replicas is not None:
            return self.scaled_replicas
        return self.spec.deploymentSpec.replicas

    @property
    def memory_bytes(self) -> int:
        return self.spec.modelSpec.memoryBytes

    def set_replica(self, idx: int, state: ReplicaState, reason: str = "") -> None:
        self.replicas[idx] = ReplicaStatus(state, reason)

    def replicas_in(self, *states: ReplicaState) -> list[int]:
        return sorted(i for i, r in self.replicas.items() if r.state in states)

    def serving_replicas(self) -> list[int]:
        return sorted(i for i, r in self.replicas.items() if r.state.serves)

    def active_replicas(self) -> list[int]:
        return sorted(i for i, r in self.replicas.items() if r.state.active)

    def set_state(self, state: ModelState, reason: str = "") -> bool:
        if (state, reason) == (self.state, self.reason):
            return False
        self.state, self.reason, self.timestamp = state, reason, time.time()
        return True


@dataclass
class ModelRecord:
    name: str
    versions: list[ModelVersion] = field(default_factory=list)
    deleted: bool = False

    @property
    def latest(self) -> ModelVersion:
        return self.versions[-1]

    def version(self, number: int) -> ModelVersion | None:
        return next((v for v in self.versions if v.number == number), None)


@dataclass
class ServerReplica:
    server: str
    idx: int
    config: agent_pb2.ReplicaConfig
    available_memory: int
    # Memory promised to loads in flight, by versioned model name (released on LOADED/LOAD_FAILED).
    reservations: dict[str, int] = field(default_factory=dict)
    connected: bool = True
    # Above the server's expected replica count, or draining: its models move away before it is stopped.
    retiring: bool = False
    # Its agent asked to drain (it is leaving): retiring whatever the server's replica count says.
    draining: bool = False
    # Connection generation: a reconnecting agent replaces the old stream; events of the old one are ignored.
    generation: int = 0

    # Cached: the config is what the agent registered with, fixed for this object (a reconnecting
    # agent gets a new one), and placement and every route read these for each model.
    @functools.cached_property
    def capabilities(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.config.capabilities)

    @functools.cached_property
    def endpoint(self) -> Endpoint:
        """Where Envoy reaches this replica's model server."""
        config = self.config
        return Endpoint(
            config.inferenceSvc,
            config.inferenceHttpPort,
            config.inferenceGrpcPort,
            reload_http_port=config.reloadHttpPort,
            reload_grpc_port=config.reloadGrpcPort,
        )

    @property
    def reserved_memory(self) -> int:
        return sum(self.reservations.values())

    @property
    def free_memory(self) -> int:
        return max(0, self.available_memory - self.reserved_memory)


@dataclass
class Server:
    name: str
    replicas: dict[int, ServerReplica] = field(default_factory=dict)
    shared: bool = True
    # -1 until a Server resource declares it (ServerNotify); agents alone do not set it.
    expected_replicas: int = -1
    min_replicas: int = 0
    max_replicas: int = 0

    def is_retiring(self, idx: int) -> bool:
        return 0 <= self.expected_replicas <= idx


class LoadedIndex:
    """How many model versions each server replica holds, loading to unloading (any active state:
    Seldon counts loaded or loading ones; a Draining or unloading version still occupies the replica,
    and the controller stops a retiring replica only once this is 0).

    Kept per model, so a model's refresh rewrites only its own entries, and a server's count reads
    only the models placed on it (status streams ask on every server change).
    """

    def __init__(self) -> None:
        self._by_server: dict[str, dict[str, dict[int, int]]] = {}  # server -> model -> idx -> n
        self._servers_of: dict[str, set[str]] = {}  # model -> servers it has entries on

    def update(self, record: ModelRecord) -> None:
        self.forget(record.name)
        for version in record.versions:
            for idx in version.active_replicas():
                slots = self._by_server.setdefault(version.server, {}).setdefault(record.name, {})
                slots[idx] = slots.get(idx, 0) + 1
                self._servers_of.setdefault(record.name, set()).add(version.server)

    def forget(self, model: str) -> None:
        for server in self._servers_of.pop(model, ()):
            models = self._by_server[server]
            models.pop(model, None)
            if not models:
                del self._by_server[server]

    def per_replica(self, server: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for slots in self._by_server.get(server, {}).values():
            for idx, count in slots.items():
                counts[idx] = counts.get(idx, 0) + count
        return counts
