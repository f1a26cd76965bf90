"""``spread-hash``: consistent hashing of model names onto replicas, for stable placement.

Every suitable replica is a node ``<server>/<idx>`` on a ``hashring`` ring (md5, equal weights);
a model goes to the first nodes met walking the ring from the hash of its name. The placement
depends only on the model name and the set of suitable replicas, so it is the same across
scheduler restarts, and adding or removing one of N replicas moves only about 1/N of the models.
A replica that lacks memory (or fails another default filter) is not on the ring, which amounts
to falling back to the next nodes of the full ring: with equal weights a node's points do not
depend on the other nodes. The default "stickiness" keys are kept (current server first,
replicas that already hold the version first), so a live model is never moved by a ring change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apis.hash_ring import ring_order
from scheduler.placement import (
    DEFAULT_REPLICA_FILTERS,
    Policy,
    ReplicaFilter,
    ReplicaSorter,
    ServerSorter,
    prefer_current_server,
    prefer_loaded,
    suitable_replicas,
)
from scheduler.state import ModelVersion, Server, ServerReplica


def node_id(replica: ServerReplica) -> str:
    return f"{replica.server}/{replica.idx}"


def by_ring(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    """Replica sorter: ring order for the model name."""
    rank = {node: i for i, node in enumerate(ring_order(version.name, map(node_id, replicas)))}
    return sorted(replicas, key=lambda r: rank[node_id(r)])


@dataclass(frozen=True)
class RingServerOrder:
    """Server sorter: servers in the order their suitable replicas are met on the ring."""

    replica_filters: Sequence[ReplicaFilter] = DEFAULT_REPLICA_FILTERS

    def __call__(self, version: ModelVersion, servers: list[Server]) -> list[Server]:
        nodes = {
            node_id(r): s.name for s in servers for r in suitable_replicas(version, s, self.replica_filters)
        }
        rank: dict[str, int] = {}
        for i, node in enumerate(ring_order(version.name, nodes)):
            rank.setdefault(nodes[node], i)
        return sorted(servers, key=lambda s: rank.get(s.name, len(nodes)))


def spread_hash() -> Policy:
    """Factory registered as ``spread-hash``."""
    return Policy(
        name="spread-hash",
        server_sorters=(RingServerOrder(), prefer_current_server),
        replica_sorters=(by_ring, prefer_loaded),
    )


if TYPE_CHECKING:
    _server_sorter: ServerSorter = RingServerOrder()
    _replica_sorter: ReplicaSorter = by_ring
