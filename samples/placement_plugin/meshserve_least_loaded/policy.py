"""Prefer the replicas carrying the least: fewest loads in flight, then least memory in use.

The placement inputs describe each replica by its configuration (``ReplicaConfig.memoryBytes``),
its free memory and the loads reserved on it but not yet finished; there is no per-replica model
list. So "load" here is (loads in flight, fraction of the replica's memory in use), which for
similar models tracks "fewest models". Unlike the default (most free *bytes* first) this treats a
small, empty replica as less loaded than a big, half-full one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler.placement import Policy, ReplicaSorter, by_index, prefer_loaded
from scheduler.state import ModelVersion, ServerReplica


def load(replica: ServerReplica) -> tuple[int, float]:
    """(loads in flight, fraction of memory in use); smaller is less loaded."""
    capacity = replica.config.memoryBytes
    used = 0.0 if capacity <= 0 else 1 - min(replica.free_memory, capacity) / capacity
    return len(replica.reservations), used


def by_load(version: ModelVersion, replicas: list[ServerReplica]) -> list[ServerReplica]:
    """Replica sorter: least loaded first."""
    return sorted(replicas, key=load)


def least_loaded() -> Policy:
    """The entry point's factory: Seldon's filters, least-loaded replicas first.

    ``prefer_loaded`` stays the primary key, so re-scheduling never moves a model off replicas
    that already hold it.
    """
    return Policy(name="least-loaded", replica_sorters=(by_index, by_load, prefer_loaded))


if TYPE_CHECKING:
    _sorter: ReplicaSorter = by_load
