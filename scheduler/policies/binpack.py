"""``binpack``: use as few replicas as possible, so empty replicas can be scaled away.

Best fit: among the servers that pass the default server filters, the server whose suitable
replicas have the least free memory (that still fits the model) comes first, and on it the
replicas with the least free memory come first. The default filters are kept, and so are the
default "stickiness" keys: a version stays on its current server and on replicas that already
hold it, so re-scheduling never moves a model just to pack tighter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scheduler.placement import (
    DEFAULT_REPLICA_FILTERS,
    Policy,
    ReplicaFilter,
    ReplicaSorter,
    ServerSorter,
    by_index,
    prefer_current_server,
    prefer_loaded,
    suitable_replicas,
)
from scheduler.state import ModelVersion, Server, ServerReplica


def by_least_free_memory(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    """Replica sorter: tightest fit first (least free memory)."""
    return sorted(replicas, key=lambda r: r.free_memory)


@dataclass(frozen=True)
class TightestServerFirst:
    """Server sorter: the server whose ``desired`` best-fitting replicas have the least free memory.

    Servers with fewer suitable replicas than desired go last (the policy only falls back to them
    for a partial placement).
    """

    replica_filters: Sequence[ReplicaFilter] = DEFAULT_REPLICA_FILTERS

    def __call__(self, version: ModelVersion, servers: list[Server]) -> list[Server]:
        desired = max(version.desired_replicas, 1)

        def key(server: Server) -> tuple[bool, int]:
            free = [r.free_memory for r in suitable_replicas(version, server, self.replica_filters)]
            return len(free) < desired, sum(free)

        return sorted(servers, key=key)


def binpack() -> Policy:
    """Factory registered as ``binpack``."""
    return Policy(
        name="binpack",
        server_sorters=(TightestServerFirst(), prefer_current_server),
        replica_sorters=(by_index, by_least_free_memory, prefer_loaded),
    )


if TYPE_CHECKING:
    _server_sorter: ServerSorter = TightestServerFirst()
    _replica_sorter: ReplicaSorter = by_least_free_memory
