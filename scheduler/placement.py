"""Placement: which server replicas get a model version.

The contract is :class:`PlacementPolicy` (any object with a ``name`` and a ``place`` method);
``scheduler.policies`` registers implementations by name. :class:`Policy` is the usual way to
build one: a list of server filters, replica filters, server sorters and replica sorters (the
shape of the reference scheduler, §4 of the reference digest). Sorters are stable and applied in
list order, so the *last* sorter is the primary key. The default policy reproduces Seldon's rules.
Filters return a reason when they reject, so ``ScheduleFailed`` can say what was missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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


@runtime_checkable
class PlacementPolicy(Protocol):
    """Decides which replicas of which server get a model version.

    ``place`` is called by the scheduler core on the event loop, once per scheduling decision,
    with the latest version of one model and every registered server (in registration order).
    It must be a pure function of its inputs: it must not mutate the version, the servers or the
    replicas (the core applies the result, reserving memory on the chosen replicas before the
    next call), must not block or await, and must not keep per-call state between calls.

    Return a :class:`Placement` naming one server and the replica indices to use (at most the
    desired replica count; fewer only when ``deploymentSpec.minReplicas`` allows it). Replicas
    that already hold the version and are left out of the placement are unloaded. Otherwise
    return a :class:`PlacementFailure` whose reason says what was missing: it becomes the
    model's ``ScheduleFailed`` reason.
    """

    @property
    def name(self) -> str:
        """The name the policy is registered and selected under."""
        ...

    def place(self, version: ModelVersion, servers: Sequence[Server]) -> Placement | PlacementFailure: ...


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


def not_retiring(version: ModelVersion, replica: ServerReplica) -> str | None:
    if replica.retiring:
        return f"replica {replica.server}/{replica.idx} is above its server's replica count"
    return None


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


DEFAULT_SERVER_FILTERS: tuple[ServerFilter, ...] = (has_replicas, sharing, not_deleted, requirements)
DEFAULT_REPLICA_FILTERS: tuple[ReplicaFilter, ...] = (connected, not_retiring, memory)
DEFAULT_SERVER_SORTERS: tuple[ServerSorter, ...] = (prefer_current_server,)
DEFAULT_REPLICA_SORTERS: tuple[ReplicaSorter, ...] = (by_index, by_free_memory, prefer_loaded)


def suitable_replicas(
    version: ModelVersion,
    server: Server,
    filters: Sequence[ReplicaFilter],
    reasons: list[str] | None = None,
) -> list[ServerReplica]:
    """The replicas of ``server`` that pass every filter, in index order; rejections go to ``reasons``."""
    replicas = []
    for replica in sorted(server.replicas.values(), key=lambda r: r.idx):
        rejected = next((r for f in filters if (r := f(version, replica)) is not None), None)
        if rejected is None:
            replicas.append(replica)
        elif reasons is not None:
            reasons.append(rejected)
    return replicas


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A :class:`PlacementPolicy` made of filters and sorters; the defaults are Seldon's rules."""

    name: str = "seldon"
    server_filters: Sequence[ServerFilter] = DEFAULT_SERVER_FILTERS
    replica_filters: Sequence[ReplicaFilter] = DEFAULT_REPLICA_FILTERS
    server_sorters: Sequence[ServerSorter] = DEFAULT_SERVER_SORTERS
    replica_sorters: Sequence[ReplicaSorter] = DEFAULT_REPLICA_SORTERS

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
        replicas = suitable_replicas(version, server, self.replica_filters, reasons)
        for sorter in self.replica_sorters:
            replicas = sorter(version, replicas)
        return replicas


if TYPE_CHECKING:
    _policy: PlacementPolicy = Policy()
