"""The agents' side of the use cases: LOAD/UNLOAD operations sent to them, their answers applied.

:class:`AgentOperations` sends operations over :class:`~scheduler.membership.Membership`'s links,
resends (then fails) operations an agent left unanswered, reconciles what a (re)connecting agent
holds, applies agents' model events, and lets replicas go once the routes Envoy holds allow it.
It calls nothing back: it returns the records whose replica states changed, and the use cases
(:mod:`scheduler.core`) refresh them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from apis.mlops.agent import agent_pb2
from scheduler import lifecycle
from scheduler.membership import AgentLink, Membership, operation
from scheduler.placement import required_memory
from scheduler.routing import Routing
from scheduler.state import ModelRecord, ModelVersion, ReplicaState, ServerReplica

log = structlog.get_logger("meshserve.scheduler")

Operation = agent_pb2.ModelOperationMessage


@dataclass(slots=True)
class AppliedEvents:
    """What a batch of agent events changed, for the use cases to follow up on."""

    touched: dict[str, ModelRecord] = field(default_factory=dict)  # by name, first touch first
    servers: dict[str, None] = field(default_factory=dict)  # reported free memory (ordered set)
    freed: bool = False  # some replica unloaded a model: memory was freed


class AgentOperations:
    """Sends agents their operations and applies their answers; replica states only, no refresh.

    Event-loop only. The model records are passed in per call: the use cases own (and on restore
    replace) them.
    """

    def __init__(self, members: Membership, routing: Routing) -> None:
        self._members = members
        self._routing = routing

    def send_load(self, version: ModelVersion, replica: ServerReplica) -> None:
        link = self._members.link(replica.server, replica.idx)
        version.set_replica(replica.idx, ReplicaState.LoadRequested)
        replica.reservations[version.versioned_name] = required_memory(version)
        if link is None:
            version.set_replica(replica.idx, ReplicaState.LoadFailed, "agent is not connected")
            return
        link.send(operation(Operation.LOAD_MODEL, version.name, version.number, version.spec))
        version.set_replica(replica.idx, ReplicaState.Loading)

    def send_unload(self, version: ModelVersion, idx: int) -> None:
        link = self._members.link(version.server, idx)
        if link is None and self._members.replica(version.server, idx) is not None:
            return  # its agent is away (grace period): on re-subscribing it is told to unload it
        if link is None:
            # The replica is gone; nothing to unload.
            version.set_replica(idx, ReplicaState.Unloaded, "agent is not connected")
            return
        link.send(operation(Operation.UNLOAD_MODEL, version.name, version.number, version.spec))
        version.set_replica(idx, ReplicaState.Unloading)

    def adopt(
        self,
        models: Mapping[str, ModelRecord],
        link: AgentLink,
        replica: ServerReplica,
        request: agent_pb2.AgentSubscribeRequest,
    ) -> list[ModelRecord]:
        """Reconcile what a (re)connecting agent holds (:func:`lifecycle.adopt`): it is told to
        unload what is not wanted; returns the records whose replica states changed."""
        reported = {(m.model.meta.name, m.version) for m in request.loadedModels}
        unwanted, touched = lifecycle.adopt(models, replica.server, replica.idx, reported)
        for name, number in unwanted:
            link.send(operation(Operation.UNLOAD_MODEL, name, number, None))
        return touched

    def apply_events(
        self, models: Mapping[str, ModelRecord], events: Iterable[agent_pb2.ModelEventMessage]
    ) -> AppliedEvents:
        """Apply agents' events in order: replica transitions and reported free memory."""
        applied = AppliedEvents()
        for event in events:
            replica = self._members.replica(event.serverName, event.replicaIdx)
            if replica is not None:
                replica.available_memory = event.availableMemoryBytes
                applied.servers[event.serverName] = None
            moved = lifecycle.apply_event(models, replica, event)
            if moved is not None:
                record, outcome = moved
                applied.touched[record.name] = record
                applied.freed |= outcome is ReplicaState.Unloaded
        return applied

    def resend_stuck(self, record: ModelRecord, since: float, deadline_s: float) -> bool:
        """Operations unanswered since before ``since`` are sent once more, or failed when they
        were already resent (a load: LoadFailed; an unload: UnloadFailed). True if any was stuck."""
        stuck = lifecycle.stuck_replicas(record, since)
        for version, idx, resent in stuck:
            loading = version.replicas[idx].state is not ReplicaState.Unloading
            if resent:
                failed = ReplicaState.LoadFailed if loading else ReplicaState.UnloadFailed
                version.set_replica(idx, failed, f"no answer from the agent within {deadline_s:g}s")
                continue
            replica = self._members.replica(version.server, idx)
            if loading and replica is not None:
                self.send_load(version, replica)
            elif not loading:
                self.send_unload(version, idx)
            if version.replicas[idx].state in lifecycle.AWAITING_AGENT:
                state = version.replicas[idx].state
                version.set_replica(idx, state, f"{lifecycle.RESENT} {deadline_s:g}s")
        if stuck:
            log.warning("operations without an answer", model=record.name, replicas=len(stuck))
        return bool(stuck)

    def settle_routes(self, record: ModelRecord) -> None:
        """Replicas Envoy routes to become Available; replicas no route reaches are unloaded."""
        for version in record.versions:
            server = self._members.servers.get(version.server)
            for idx in version.replicas_in(*lifecycle.AWAITING_CONFIRMATION):
                if server is None or idx not in server.replicas:
                    if version.replicas[idx].state is ReplicaState.UnloadEnvoyRequested:
                        self.send_unload(version, idx)  # the replica is gone
                    continue
                endpoint, target = server.replicas[idx].endpoint, version.versioned_name
                if version.replicas[idx].state is ReplicaState.UnloadEnvoyRequested:
                    if not self._routing.routes_to(target, endpoint):
                        self.send_unload(version, idx)
                elif self._routing.held_routes_to(target, endpoint):
                    version.set_replica(idx, ReplicaState.Available)
