"""Placement decisions over the model records: pure functions, no sends, no refresh.

:func:`place` runs the placement policy for a model's latest version and marks the replicas that
leave its placement; it returns the loads to send, which the use cases send. Moving to another
server is a roll-out to a new version: the old one keeps serving until the new one is Available
(as in Seldon), and replica indexes never mix servers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from apis.mlops.scheduler import scheduler_pb2
from scheduler.placement import Placement, PlacementPolicy
from scheduler.state import ModelRecord, ModelVersion, ReplicaState, Server, ServerReplica

log = structlog.get_logger("meshserve.scheduler.scheduling")


def place(
    record: ModelRecord, servers: Mapping[str, Server], policy: PlacementPolicy
) -> list[tuple[ModelVersion, ServerReplica]]:
    """Place ``record``'s latest version; returns the (version, replica) loads to send."""
    latest = record.latest
    placement = policy.place(latest, list(servers.values()))
    if not isinstance(placement, Placement):
        latest.schedule_error = placement.reason
        log.info("schedule failed", model=latest.versioned_name, reason=placement.reason)
        return []
    latest.schedule_error = ""
    server = servers[placement.server]
    if latest.server not in ("", placement.server) and latest.active_replicas():
        moved = scheduler_pb2.Model()
        moved.CopyFrom(latest.spec)
        latest = ModelVersion(latest.number + 1, moved, scaled_replicas=latest.scaled_replicas)
        record.versions.append(latest)
        log.info("model moves server", model=record.name, version=latest.number, server=placement.server)
    for idx in latest.active_replicas():
        if idx not in placement.replicas:
            # A serving replica keeps serving (Draining) until its replacements are up.
            serving = latest.replicas[idx].state.serves
            latest.set_replica(idx, ReplicaState.Draining if serving else ReplicaState.UnloadEnvoyRequested)
    latest.server = placement.server
    loads: list[tuple[ModelVersion, ServerReplica]] = []
    for idx in placement.replicas:
        status = latest.replicas.get(idx)
        if status is None or not status.state.active:
            loads.append((latest, server.replicas[idx]))
    return loads


def unsatisfied(models: Iterable[ModelRecord]) -> list[ModelRecord]:
    """Models that failed to schedule or lack replicas (worth retrying when capacity appears).

    A replica whose load failed is not retried here: that needs a new spec or a capacity change on
    its own server, not any membership event.
    """
    found = []
    for record in models:
        latest = record.latest
        if record.deleted:
            continue
        short = len(latest.active_replicas()) < max(latest.desired_replicas, 1)
        if latest.schedule_error or (short and not latest.replicas_in(ReplicaState.LoadFailed)):
            found.append(record)
    return found


def on_retiring(models: Iterable[ModelRecord], server: Server) -> list[ModelRecord]:
    """Models whose latest version occupies a retiring replica of ``server``."""
    retiring = {r.idx for r in server.replicas.values() if r.retiring}
    return [
        record
        for record in models
        if not record.deleted
        and record.latest.server == server.name
        and retiring & set(record.latest.active_replicas())
    ]
