"""Placement: which server replicas get a model version.

A policy is a list of server filters, replica filters, server sorters and replica sorters (the
shape of the reference scheduler, §4 of the reference digest). Sorters are stable and applied in
list order, so the *last* sorter is the primary key. The default policy reproduces Seldon's rules.
Filters return a reason when they reject, so ``ScheduleFailed`` can say what was missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from scheduler.state import ModelVersion, Server, ServerReplica

ServerFilter = Callable[[ModelVersion, Server], str | None]  # None = accepted, else the reason
ReplicaFilter = Callable[[ModelVersion, ServerReplica], str | None]
ServerSorter = Callable[[ModelVersion, list[Server]], list[Server]]
ReplicaSorter = Callable[[ModelVersion, list[ServerReplica]], list[ServerReplica]]


@dataclass(frozen=True)
class Placement:
    server: str
    replicas: tuple[int, ...]


@dataclass(frozen=True)
class PlacementFailure:
    reason: str


def required_memory(version: ModelVersion) -> int:
    spec = version.spec.modelSpec
    info = spec.modelRuntimeInfo if spec.HasField("modelRuntimeInfo") else None
    instances = 1
    if info is not None and info.HasField("mlserver") and info.mlserver.parallelWorkers > 1:
        instances = info.mlserver.parallelWorkers
    return spec.memoryBytes * instances


# -- default filters -----------------------------------------------------------------------------


def has_replicas(version: ModelVersion, server: Server) -> str | None:
    if any(r.connected for r in server.replicas.values()):
        return None
    return f"server {server.name} has no connected replicas"


def sharing(version: ModelVersion, server: Server) -> str | None:
    spec = version.spec.modelSpec
    if spec.HasField("server") and spec.server:
        return None if spec.server == server.name else f"model is pinned to server {spec.server}"
    return None if server.shared else f"server {server.name} is not shared"


def not_deleted(version: ModelVersion, server: Server) -> str | None:
    return None if server.expected_replicas != 0 else f"server {server.name} is scaled to 0"


def requirements(version: ModelVersion, server: Server) -> str | None:
    replica = next(iter(server.replicas.values()), None)
    capabilities = replica.capabilities if replica else frozenset()
    missing = sorted({r.strip() for r in version.spec.modelSpec.requirements} - capabilities)
    return f"server {server.name} lacks capabilities {missing}" if missing else None


def connected(version: ModelVersion, replica: ServerReplica) -> str | None:
    return None if replica.connected else f"replica {replica.server}/{replica.idx} is not connected"


def memory(version: ModelVersion, replica: ServerReplica) -> str | None:
    if version.replicas.get(replica.idx) is not None and version.replicas[replica.idx].state.active:
        return None  # already holds this version: re-scheduling must not evict itself
    needed = required_memory(version)
    if needed <= replica.free_memory:
        return None
    return (
        f"replica {replica.server}/{replica.idx} has {replica.free_memory} bytes free, model needs {needed}"
    )


# -- default sorters -----------------------------------------------------------------------------


def prefer_current_server(version: ModelVersion, servers: list[Server]) -> list[Server]:
    return sorted(servers, key=lambda s: s.name != version.server)


def by_index(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    return sorted(replicas, key=lambda r: r.idx)


def by_free_memory(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    return sorted(replicas, key=lambda r: -r.free_memory)


def prefer_loaded(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    def loaded(r: ServerReplica) -> bool:
        status = version.replicas.get(r.idx)
        return status is not None and status.state.active

    return sorted(replicas, key=lambda r: not loaded(r))


@dataclass
class Policy:
    server_filters: Sequence[ServerFilter] = (has_replicas, sharing, not_deleted, requirements)
    replica_filters: Sequence[ReplicaFilter] = (connected, memory)
    server_sorters: Sequence[ServerSorter] = (prefer_current_server,)
    replica_sorters: Sequence[ReplicaSorter] = field(default=(by_index, by_free_memory, prefer_loaded))

    def place(self, version: ModelVersion, servers: Sequence[Server]) -> Placement | PlacementFailure:
        reasons: list[str] = []
        candidates = [s for s in servers if self._accepts(version, s, reasons)]
        if not candidates:
            detail = "; ".join(reasons) if reasons else "no servers are registered"
            return PlacementFailure(f"no matching servers are available ({detail})")
        for sorter in self.server_sorters:
            candidates = sorter(version, candidates)
        desired = max(version.desired_replicas, 1)
        minimum = version.spec.deploymentSpec.minReplicas
        for need in (desired, minimum) if 0 < minimum < desired else (desired,):
            for server in candidates:
                replicas = self._suitable_replicas(version, server, reasons)
                if len(replicas) >= need:
                    chosen = replicas[: min(len(replicas), desired)]
                    return Placement(server.name, tuple(r.idx for r in chosen))
                reasons.append(
                    f"server {server.name} has {len(replicas)} suitable replicas, model needs {need}"
                )
        return PlacementFailure(
            "no matching server had enough suitable replicas (" + "; ".join(dict.fromkeys(reasons)) + ")"
        )

    def _accepts(self, version: ModelVersion, server: Server, reasons: list[str]) -> bool:
        for check in self.server_filters:
            reason = check(version, server)
            if reason is not None:
                reasons.append(reason)
                return False
        return True

    def _suitable_replicas(
        self, version: ModelVersion, server: Server, reasons: list[str]
    ) -> list[ServerReplica]:
        replicas = []
        for replica in server.replicas.values():
            rejected = next((r for f in self.replica_filters if (r := f(version, replica)) is not None), None)
            if rejected is None:
                replicas.append(replica)
            else:
                reasons.append(rejected)
        for sorter in self.replica_sorters:
            replicas = sorter(version, replicas)
        return replicas
