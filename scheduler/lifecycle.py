"""The model/replica state machine: pure functions over :mod:`scheduler.state`, no I/O, no hooks.

Life of a model version (make before break):
  LoadModel → placement → replicas LoadRequested → LOAD sent (Loading) → agent LOADED (Loaded)
  → route published → every Envoy ACKed → replicas Available → model ModelAvailable
  → older versions: UnloadEnvoyRequested → every route ACKed without them → UNLOAD sent
  (Unloading) → agent UNLOADED (Unloaded) → version ModelTerminated.

Model states follow Seldon's rules for deriving a model's state from its replicas'.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from apis.mlops.agent import agent_pb2
from scheduler.state import ModelRecord, ModelState, ModelVersion, ReplicaState, ServerReplica

log = structlog.get_logger("meshserve.scheduler.lifecycle")

Event = agent_pb2.ModelEventMessage

# Replica states that change once Envoy holds the model's current route.
AWAITING_CONFIRMATION = (
    ReplicaState.Loaded,
    ReplicaState.LoadedUnavailable,
    ReplicaState.UnloadEnvoyRequested,
)

# Replica states Envoy may route to.
ROUTABLE = (
    ReplicaState.Loaded,
    ReplicaState.Available,
    ReplicaState.LoadedUnavailable,
    ReplicaState.Draining,
)

# Replica states of a superseded version that are taken out of the route before unloading.
RETIRABLE = frozenset(
    {
        ReplicaState.Loaded,
        ReplicaState.Available,
        ReplicaState.LoadedUnavailable,
        ReplicaState.Draining,
        ReplicaState.LoadRequested,
        ReplicaState.Loading,
    }
)

# Agent event -> (replica states it may arrive in, the state it leads to).
_EVENT_TRANSITIONS: dict[int, tuple[tuple[ReplicaState, ...], ReplicaState]] = {
    Event.LOADED: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.Loaded),
    Event.LOAD_FAILED: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.LoadFailed),
    Event.LOAD_FAIL_MEMORY: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.LoadFailed),
    Event.UNLOADED: ((ReplicaState.Unloading,), ReplicaState.Unloaded),
    Event.UNLOAD_FAILED: ((ReplicaState.Unloading,), ReplicaState.UnloadFailed),
}


def event_outcome(event: Event.Event.ValueType, current: ReplicaState) -> ReplicaState | None:
    """The replica state an agent event leads to, or None when the event is stale here."""
    transition = _EVENT_TRANSITIONS.get(event)
    if transition is None or current not in transition[0]:
        return None
    return transition[1]


def apply_event(
    models: Mapping[str, ModelRecord], replica: ServerReplica | None, event: Event
) -> tuple[ModelRecord, ReplicaState] | None:
    """Move one replica as an agent event says; None (and a log line) when it is unknown or stale.

    Replica states are per index of the version's server, so an event from another server is stale.
    """
    record = models.get(event.modelName)
    version = record.version(event.modelVersion) if record else None
    on_server = version is not None and version.server == event.serverName
    status = version.replicas.get(event.replicaIdx) if version is not None and on_server else None
    if record is None or version is None or status is None:
        log.warning("event for unknown model replica", model=event.modelName, version=event.modelVersion)
        return None
    outcome = event_outcome(event.event, status.state)
    if outcome is None:
        log.warning(
            "ignoring stale agent event",
            model=version.versioned_name,
            replica_state=status.state,
            agent_event=Event.Event.Name(event.event),
        )
        return None
    if replica is not None:
        replica.reservations.pop(version.versioned_name, None)  # the load finished either way
    version.set_replica(event.replicaIdx, outcome, event.message)
    spec = version.spec.modelSpec
    if (
        event.event == Event.LOADED
        and event.HasField("runtimeInfo")
        and not spec.HasField("modelRuntimeInfo")
    ):
        spec.modelRuntimeInfo.CopyFrom(event.runtimeInfo)
    log.debug(
        "agent event",
        model=version.versioned_name,
        replica=event.replicaIdx,
        agent_event=Event.Event.Name(event.event),
        message=event.message,
    )
    return record, outcome


# Replica states that wait for an agent's answer.
AWAITING_AGENT = (ReplicaState.LoadRequested, ReplicaState.Loading, ReplicaState.Unloading)
RESENT = "sent again: the agent did not answer within"


def stuck_replicas(record: ModelRecord, since: float) -> list[tuple[ModelVersion, int, bool]]:
    """Replicas waiting for an agent's answer since before ``since``: (version, index, resent).

    ``resent`` says the operation was already sent a second time (it then fails instead).
    """
    return [
        (version, idx, status.reason.startswith(RESENT))
        for version in record.versions
        for idx, status in version.replicas.items()
        if status.state in AWAITING_AGENT and status.timestamp < since
    ]


def update_states(record: ModelRecord) -> None:
    for version in record.versions:
        update_state(version, latest=version is record.latest and not record.deleted)


def update_state(version: ModelVersion, *, latest: bool) -> None:
    """A version's model state from its replicas' states."""
    states = [r.state for r in version.replicas.values()]
    if not latest:
        if ReplicaState.UnloadFailed in states:
            version.set_state(ModelState.ModelTerminateFailed, newest_reason(version))
        elif version.active_replicas():
            version.set_state(ModelState.ModelTerminating)
        else:
            version.set_state(ModelState.ModelTerminated)
        return
    available = len(version.replicas_in(ReplicaState.Available))
    minimum = version.spec.deploymentSpec.minReplicas
    if version.schedule_error and not available:
        version.set_state(ModelState.ScheduleFailed, version.schedule_error)
    elif ReplicaState.LoadFailed in states or ReplicaState.LoadedUnavailable in states:
        version.set_state(ModelState.ModelFailed, newest_reason(version))
    elif version.desired_replicas == 0 and minimum == 0 and not available:
        version.set_state(ModelState.ModelScaledDown)
    elif available and (available >= version.desired_replicas or (minimum and available >= minimum)):
        version.set_state(ModelState.ModelAvailable, version.schedule_error)
    else:
        version.set_state(ModelState.ModelProgressing)


# Terminated versions kept for status history (allVersions); older ones are forgotten, so a model
# re-applied thousands of times does not grow without bound in memory, the store and status calls.
KEPT_TERMINATED_VERSIONS = 5


def prune_terminated(record: ModelRecord) -> None:
    """Forget the oldest terminated versions beyond :data:`KEPT_TERMINATED_VERSIONS`."""
    terminated = [
        v for v in record.versions[:-1] if v.state is ModelState.ModelTerminated and not v.active_replicas()
    ]
    for version in terminated[: max(0, len(terminated) - KEPT_TERMINATED_VERSIONS)]:
        record.versions.remove(version)


def retire_superseded(record: ModelRecord) -> bool:
    """Mark what may leave the route: drained replicas whose replacements are up, and (once the
    latest version is Available) every older version's replicas. True when it marked any."""
    latest = record.latest
    marked = False
    if replacements_ready(latest):
        for idx in latest.replicas_in(ReplicaState.Draining):
            latest.set_replica(idx, ReplicaState.UnloadEnvoyRequested)
            marked = True
    if record.deleted or latest.state is not ModelState.ModelAvailable:
        return marked
    for version in record.versions[:-1]:
        for idx in version.active_replicas():
            if version.replicas[idx].state in RETIRABLE:
                version.set_replica(idx, ReplicaState.UnloadEnvoyRequested)
                marked = True
    return marked


def route_refused(record: ModelRecord, targets: frozenset[str], reason: str) -> None:
    """An Envoy refused a route naming ``targets``: their Loaded replicas cannot serve, and say why."""
    for version in record.versions:
        if version.versioned_name in targets:
            for idx in version.replicas_in(ReplicaState.Loaded):
                version.set_replica(idx, ReplicaState.LoadedUnavailable, reason)


def replacements_ready(version: ModelVersion) -> bool:
    """Draining replicas may go: the others finished loading and at least one is Available."""
    if not version.replicas_in(ReplicaState.Draining):
        return False
    loading = version.replicas_in(ReplicaState.LoadRequested, ReplicaState.Loading)
    return not loading and bool(version.replicas_in(ReplicaState.Available))


def newest_reason(version: ModelVersion) -> str:
    failed = [r for r in version.replicas.values() if r.reason]
    return max(failed, key=lambda r: r.timestamp).reason if failed else ""


def adopt(
    models: Mapping[str, ModelRecord], server: str, idx: int, reported: set[tuple[str, int]]
) -> tuple[list[tuple[str, int]], list[ModelRecord]]:
    """Reconcile what a (re)connecting agent holds with what the scheduler believes.

    Returns the ``(model, version)`` pairs the agent should unload, and the records whose replica
    states changed. What the agent holds and the scheduler wants becomes Loaded; what the scheduler
    believed was there but the agent no longer holds is forgotten.
    """
    unwanted: list[tuple[str, int]] = []
    for name, number in sorted(reported):
        record = models.get(name)
        version = record.version(number) if record is not None else None
        status = version.replicas.get(idx) if version is not None else None
        keep = (
            record is not None
            and not record.deleted
            and version is not None
            and version.server in ("", server)
            and (version is record.latest or bool(version.serving_replicas()))
            and (status is None or status.state.serves or status.state is ReplicaState.Loading)
        )
        if not keep or version is None:
            unwanted.append((name, number))
            if version is not None and status is not None and version.server == server:
                version.set_replica(idx, ReplicaState.Unloading)
            continue
        if status is None or not status.state.serves:
            version.set_replica(idx, ReplicaState.Loaded)
        version.server = server
    touched: list[ModelRecord] = []
    for record in models.values():
        on_replica = [v for v in record.versions if v.server == server and idx in v.replicas]
        for version in on_replica:
            state = version.replicas[idx].state
            held = (record.name, version.number) in reported
            if held:
                continue
            if state is ReplicaState.Unloading:
                version.set_replica(idx, ReplicaState.Unloaded)  # done; its UNLOADED was lost
            elif state.active:
                del version.replicas[idx]
        if on_replica:
            touched.append(record)
    return unwanted, touched


def forget_replica(record: ModelRecord, server: str, idx: int) -> bool:
    """A replica that is gone (its agent's grace period ran out) holds none of ``record``'s
    versions any more; True when it held some."""
    held = False
    for version in record.versions:
        if version.server == server and idx in version.replicas:
            del version.replicas[idx]
            held = True
    return held
