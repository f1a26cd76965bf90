"""The scheduler's use cases: model load/unload, agent membership and events, Envoy confirmation.

Transport-free: gRPC servicers (``scheduler/api.py``, ``scheduler/agent_api.py``) only convert
messages and call in here. Everything runs on one event loop, so state is mutated without locks;
nothing in this module awaits while holding a half-updated model.

Life of a model version (make before break):
  LoadModel → placement → replicas LoadRequested → LOAD sent (Loading) → agent LOADED (Loaded)
  → route published → every Envoy ACKed → replicas Available → model ModelAvailable
  → older versions: UnloadEnvoyRequested → route without them ACKed → UNLOAD sent (Unloading)
  → agent UNLOADED (Unloaded) → version ModelTerminated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field

import structlog

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource, validate_model, validate_name, validate_server
from scheduler.placement import Placement, PlacementPolicy, Policy, required_memory
from scheduler.state import (
    ModelRecord,
    ModelState,
    ModelVersion,
    ReplicaState,
    Server,
    ServerReplica,
)
from scheduler.store import StateStore
from xdsserver.cache import Requirement
from xdsserver.routes import Endpoint, Route, RoutePublisher, Split

log = structlog.get_logger("meshserve.scheduler")

Event = agent_pb2.ModelEventMessage
Operation = agent_pb2.ModelOperationMessage


class ModelNotFound(LookupError):
    pass


@dataclass(eq=False)
class AgentLink:
    """One agent's Subscribe stream: the scheduler queues operations, the servicer sends them."""

    server: str
    idx: int
    generation: int
    outbox: asyncio.Queue[Operation | None] = field(default_factory=asyncio.Queue)

    def send(self, operation: Operation) -> None:
        self.outbox.put_nowait(operation)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class AckOracle:
    """What the core needs from the xDS server (a Protocol in spirit; see XdsServer.acked)."""

    def acked(self, requirements: Iterable[Requirement]) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Scheduler:
    def __init__(
        self,
        routes: RoutePublisher,
        envoy: AckOracle,
        *,
        policy: PlacementPolicy | None = None,
        agent_grace_seconds: float = 15.0,
        store: StateStore | None = None,
    ) -> None:
        self._routes = routes
        self._envoy = envoy
        self._policy = policy or Policy()
        self._agent_grace = agent_grace_seconds
        self.models: dict[str, ModelRecord] = {}
        self.servers: dict[str, Server] = {}
        self._links: dict[tuple[str, int], AgentLink] = {}
        self._generation = 0
        self._awaiting_envoy: dict[str, list[Requirement]] = {}
        self._model_listeners: list[Callable[[str], None]] = []
        self._server_listeners: list[Callable[[str], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._store = store or StateStore(None)
        self._store.bind(lambda: self.models, lambda: self.servers)

    def commit(self) -> None:
        """Make every accepted change durable now (the API calls this before answering)."""
        self._store.flush()

    def restore(self) -> None:
        """Reload persisted state and re-publish its routes, before Envoy or any agent connects.

        Replicas come back disconnected: their agents get the usual grace period to re-subscribe
        (and re-adopt what they hold) before their models are moved.
        """
        self.models, self.servers = self._store.load()
        for server in self.servers.values():
            for replica in server.replicas.values():
                self._generation += 1
                replica.generation = self._generation
                self._spawn(self._expire_replica(AgentLink(server.name, replica.idx, replica.generation)))
        for record in self.models.values():
            self._publish(record)
        log.info("state restored", models=len(self.models), servers=len(self.servers))

    # -- listeners (status streams) ----------------------------------------------------------------

    def on_model_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._model_listeners.append(listener)
        return lambda: self._model_listeners.remove(listener)

    def on_server_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._server_listeners.append(listener)
        return lambda: self._server_listeners.remove(listener)

    def _model_changed(self, name: str) -> None:
        self._store.model_changed(name)
        for listener in list(self._model_listeners):
            listener(name)

    def _server_changed(self, name: str, *, persist: bool = True) -> None:
        if persist:
            self._store.server_changed(name)
        for listener in list(self._server_listeners):
            listener(name)

    # -- model API ---------------------------------------------------------------------------------

    def load_model(self, model: scheduler_pb2.Model) -> None:
        """Create a model, add a version (spec changed) or rescale it (deployment changed)."""
        validate_model(model)
        pinned = model.modelSpec.server if model.modelSpec.HasField("server") else ""
        if pinned and pinned not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise InvalidResource(
                f"model is pinned to server {pinned!r}, which does not exist (servers: {known})"
            )
        model = _normalised(model)
        name = model.meta.name
        record = self.models.get(name)
        if record is None:
            record = self.models[name] = ModelRecord(name)
            first = model.meta.kubernetesMeta.generation if model.meta.HasField("kubernetesMeta") else 0
            record.versions.append(ModelVersion(max(1, first), model))
        elif record.deleted or not _same_model_spec(record.latest.spec, model):
            record.deleted = False
            record.versions.append(ModelVersion(record.latest.number + 1, model))
        elif record.latest.spec.deploymentSpec != model.deploymentSpec:
            record.latest.spec.deploymentSpec.CopyFrom(model.deploymentSpec)
        elif record.latest.spec.meta != model.meta:
            record.latest.spec.meta.CopyFrom(model.meta)
            self._model_changed(name)
            return
        else:
            return  # identical: loading twice is a no-op
        log.info("model accepted", model=name, version=record.latest.number)
        self._schedule(record)

    def unload_model(self, name: str) -> None:
        validate_name(name)
        record = self.models.get(name)
        if record is None or record.deleted:
            raise ModelNotFound(f"model {name} not found")
        record.deleted = True
        log.info("model unload requested", model=name)
        for version in record.versions:
            for idx in version.active_replicas():
                version.set_replica(idx, ReplicaState.UnloadEnvoyRequested)
        self._refresh(record)

    # -- server resources --------------------------------------------------------------------------

    def notify_servers(self, servers: Iterable[scheduler_pb2.ServerNotify]) -> None:
        """Declare servers (a Server resource, or the controller's view): replica counts, sharing.

        All are validated before any is applied. Replicas at or above the expected count retire:
        their models are placed elsewhere first, then the controller may stop them.
        """
        declared = list(servers)
        for notify in declared:
            validate_server(notify)
        for notify in declared:
            server = self.servers.setdefault(notify.name, Server(notify.name))
            server.expected_replicas = notify.expectedReplicas
            server.min_replicas, server.max_replicas = notify.minReplicas, notify.maxReplicas
            server.shared = notify.shared
            log.info("server declared", server=notify.name, replicas=notify.expectedReplicas)
            for replica in server.replicas.values():
                replica.retiring = server.is_retiring(replica.idx)
            self._move_off_retiring(server)
            self._forget_if_empty(server)
            self._server_changed(notify.name)
        self._retry_unsatisfied()

    def _move_off_retiring(self, server: Server) -> None:
        retiring = {r.idx for r in server.replicas.values() if r.retiring}
        for record in list(self.models.values()):
            latest = record.latest
            on_retiring = latest.server == server.name and retiring & set(latest.active_replicas())
            if on_retiring and not record.deleted:
                self._schedule(record)

    def _forget_if_empty(self, server: Server) -> None:
        if not server.replicas and server.expected_replicas <= 0 and self.servers.get(server.name) is server:
            del self.servers[server.name]
            log.info("server removed", server=server.name)

    async def drain(self, server_name: str, idx: int) -> None:
        """Move every model off one replica (AgentDrain), returning once each runs elsewhere.

        Models that cannot be placed elsewhere are not waited for (reference §4.7). Callers bound
        the wait with ``asyncio.timeout``.
        """
        server = self.servers.get(server_name)
        replica = server.replicas.get(idx) if server else None
        if server is None or replica is None:
            raise ModelNotFound(f"replica {server_name}/{idx} is not registered")
        replica.retiring = True
        self._move_off_retiring(server)
        changed = asyncio.Event()
        stop_listening = self.on_model_change(lambda _: changed.set())
        try:
            while self._still_on(server_name, idx):
                changed.clear()
                await changed.wait()
        finally:
            stop_listening()
        log.info("replica drained", server=server_name, replica=idx)

    def _still_on(self, server_name: str, idx: int) -> bool:
        for record in self.models.values():
            latest = record.latest
            if latest.server != server_name or record.deleted or latest.schedule_error:
                continue
            if idx in latest.active_replicas():
                return True
        return False

    # -- agent membership --------------------------------------------------------------------------

    def agent_connected(self, request: agent_pb2.AgentSubscribeRequest) -> AgentLink:
        server_name, idx = request.serverName, request.replicaIdx
        validate_name(server_name, kind="server")
        self._generation += 1
        previous = self._links.pop((server_name, idx), None)
        if previous is not None:
            previous.close()
        server = self.servers.setdefault(server_name, Server(server_name))
        if server.expected_replicas < 0:
            # Only an undeclared server takes the agent's word; a Server resource's setting wins.
            server.shared = request.shared
        replica = ServerReplica(
            server_name,
            idx,
            request.replicaConfig,
            available_memory=request.availableMemoryBytes,
            generation=self._generation,
            retiring=server.is_retiring(idx),
        )
        server.replicas[idx] = replica
        link = self._links[(server_name, idx)] = AgentLink(server_name, idx, self._generation)
        log.info("agent connected", server=server_name, replica=idx, models=len(request.loadedModels))
        self._adopt_reported_models(replica, request.loadedModels, link)
        self._server_changed(server_name)
        self._retry_unsatisfied()
        return link

    def _adopt_reported_models(
        self, replica: ServerReplica, held: Iterable[agent_pb2.ModelVersion], link: AgentLink
    ) -> None:
        reported = {(m.model.meta.name, m.version) for m in held}
        for name, number in sorted(reported):
            record = self.models.get(name)
            version = record.version(number) if record is not None and not record.deleted else None
            status = version.replicas.get(replica.idx) if version is not None else None
            keep = (
                record is not None
                and version is not None
                and version.server in ("", replica.server)
                and (version is record.latest or bool(version.serving_replicas()))
                and (status is None or status.state.serves or status.state is ReplicaState.Loading)
            )
            if not keep or version is None:
                link.send(_operation(Operation.UNLOAD_MODEL, name, number, None))
                if version is not None and status is not None and version.server == replica.server:
                    version.set_replica(replica.idx, ReplicaState.Unloading)
                continue
            if status is None or not status.state.serves:
                version.set_replica(replica.idx, ReplicaState.Loaded)
            version.server = replica.server
        # Models we believed were on this replica but the agent no longer holds are lost.
        for record in list(self.models.values()):
            touched = False
            for version in record.versions:
                status = version.replicas.get(replica.idx)
                held_now = (record.name, version.number) in reported
                if version.server == replica.server and status is not None:
                    touched = True
                    if status.state.active and not held_now and status.state is not ReplicaState.Unloading:
                        del version.replicas[replica.idx]
            if touched:
                self._refresh(record)

    def agent_disconnected(self, link: AgentLink) -> None:
        current = self._links.get((link.server, link.idx))
        if current is not link:
            return  # already replaced by a newer connection
        del self._links[(link.server, link.idx)]
        log.info("agent disconnected", server=link.server, replica=link.idx, grace=self._agent_grace)
        # The model server may well still be serving; give the agent time to come back before
        # pulling its routes (a restarted agent then re-adopts its models with zero downtime).
        server = self.servers.get(link.server)
        replica = server.replicas.get(link.idx) if server else None
        if replica is not None and replica.generation == link.generation:
            replica.connected = False
        self._spawn(self._expire_replica(link))

    async def _expire_replica(self, link: AgentLink) -> None:
        await asyncio.sleep(self._agent_grace)
        server = self.servers.get(link.server)
        replica = server.replicas.get(link.idx) if server else None
        if server is None or replica is None or replica.generation != link.generation:
            return
        del server.replicas[link.idx]
        log.info("replica removed", server=link.server, replica=link.idx)
        self._forget_if_empty(server)
        for record in list(self.models.values()):
            touched = False
            for version in record.versions:
                if version.server == link.server and link.idx in version.replicas:
                    del version.replicas[link.idx]
                    touched = True
            if touched and record.deleted:
                self._refresh(record)
            elif touched:
                self._schedule(record)
        self._server_changed(link.server)
        self._retry_unsatisfied()

    # -- agent events ------------------------------------------------------------------------------

    def agent_event(self, event: agent_pb2.ModelEventMessage) -> None:
        record = self.models.get(event.modelName)
        version = record.version(event.modelVersion) if record else None
        server = self.servers.get(event.serverName)
        replica = server.replicas.get(event.replicaIdx) if server else None
        if replica is not None:
            replica.available_memory = event.availableMemoryBytes
            # Free memory is re-reported by the agent on reconnect: not worth a write per event.
            self._server_changed(event.serverName, persist=False)
        # Replica states are per index of the version's server; an event from another server is stale.
        on_server = version is not None and version.server == event.serverName
        status = version.replicas.get(event.replicaIdx) if version is not None and on_server else None
        if record is None or version is None or status is None:
            log.warning("event for unknown model replica", model=event.modelName, version=event.modelVersion)
            return
        transition = _EVENT_TRANSITIONS.get(event.event)
        if transition is None or status.state not in transition[0]:
            log.warning(
                "ignoring stale agent event",
                model=version.versioned_name,
                replica_state=status.state,
                agent_event=Event.Event.Name(event.event),
            )
            return
        outcome = transition[1]
        if replica is not None:
            replica.reservations.pop(version.versioned_name, None)
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
        self._refresh(record)
        if outcome is ReplicaState.Unloaded:
            self._retry_unsatisfied()  # memory was freed

    # -- Envoy -------------------------------------------------------------------------------------

    def envoy_acked(self) -> None:
        """Called by the xDS server on every ACK: confirm routes that every Envoy now holds."""
        for name, requirements in list(self._awaiting_envoy.items()):
            if self._envoy.acked(requirements):
                del self._awaiting_envoy[name]
                record = self.models.get(name)
                if record is not None:
                    self._route_confirmed(record)

    def _route_confirmed(self, record: ModelRecord) -> None:
        """The current route of ``record`` is live in every Envoy."""
        route = self._routes.route(record.name)
        routed = {s.target for s in route.splits} if route is not None else set()
        for version in record.versions:
            in_route = version.versioned_name in routed
            for idx, status in list(version.replicas.items()):
                if in_route and status.state in (ReplicaState.Loaded, ReplicaState.LoadedUnavailable):
                    version.set_replica(idx, ReplicaState.Available)
                elif status.state is ReplicaState.UnloadEnvoyRequested:
                    self._send_unload(version, idx)
        self._refresh(record, publish=False)

    # -- scheduling --------------------------------------------------------------------------------

    def _schedule(self, record: ModelRecord) -> None:
        if record.deleted:
            self._refresh(record)
            return
        latest = record.latest
        placement = self._policy.place(latest, list(self.servers.values()))
        if not isinstance(placement, Placement):
            latest.schedule_error = placement.reason
            log.info("schedule failed", model=latest.versioned_name, reason=placement.reason)
            self._refresh(record)
            return
        latest.schedule_error = ""
        server = self.servers[placement.server]
        if latest.server not in ("", placement.server) and latest.active_replicas():
            # Moving servers is a roll-out to a new version: the old one keeps serving until the
            # new one is Available (reference §4.4), and replica indexes never mix servers.
            moved = scheduler_pb2.Model()
            moved.CopyFrom(latest.spec)
            latest = ModelVersion(latest.number + 1, moved)
            record.versions.append(latest)
            log.info("model moves server", model=record.name, version=latest.number, server=placement.server)
        for idx in latest.active_replicas():
            if idx not in placement.replicas:
                # A serving replica keeps serving (Draining) until its replacements are up.
                serving = latest.replicas[idx].state.serves
                latest.set_replica(
                    idx, ReplicaState.Draining if serving else ReplicaState.UnloadEnvoyRequested
                )
        latest.server = placement.server
        for idx in placement.replicas:
            status = latest.replicas.get(idx)
            if status is None or not status.state.active:
                self._send_load(latest, server.replicas[idx])
        self._refresh(record)

    def _retry_unsatisfied(self) -> None:
        """Retry models that failed to schedule or lack replicas (capacity may have appeared)."""
        for record in list(self.models.values()):
            latest = record.latest
            if record.deleted:
                continue
            short = len(latest.active_replicas()) < max(latest.desired_replicas, 1)
            # A replica whose load failed is not retried here: that needs a new spec or capacity change
            # on its own server, not any membership event.
            if latest.schedule_error or (short and not latest.replicas_in(ReplicaState.LoadFailed)):
                self._schedule(record)

    def _send_load(self, version: ModelVersion, replica: ServerReplica) -> None:
        link = self._links.get((replica.server, replica.idx))
        version.set_replica(replica.idx, ReplicaState.LoadRequested)
        replica.reservations[version.versioned_name] = required_memory(version)
        if link is None:
            version.set_replica(replica.idx, ReplicaState.LoadFailed, "agent is not connected")
            return
        link.send(_operation(Operation.LOAD_MODEL, version.name, version.number, version.spec))
        version.set_replica(replica.idx, ReplicaState.Loading)

    def _send_unload(self, version: ModelVersion, idx: int) -> None:
        link = self._links.get((version.server, idx))
        if link is None:
            # The replica is gone; nothing to unload.
            version.set_replica(idx, ReplicaState.Unloaded, "agent is not connected")
            return
        link.send(_operation(Operation.UNLOAD_MODEL, version.name, version.number, version.spec))
        version.set_replica(idx, ReplicaState.Unloading)

    # -- routes and states -------------------------------------------------------------------------

    def _refresh(self, record: ModelRecord, *, publish: bool = True) -> None:
        """Recompute states, retire superseded versions, republish the route, notify listeners."""
        latest = record.latest
        self._update_states(record)
        if _replacements_ready(latest):
            for idx in latest.replicas_in(ReplicaState.Draining):
                latest.set_replica(idx, ReplicaState.UnloadEnvoyRequested)
        if not record.deleted and latest.state is ModelState.ModelAvailable:
            # Make before break: older versions leave the route first and are unloaded once every
            # Envoy has ACKed the route without them (_route_confirmed).
            for version in record.versions[:-1]:
                for idx in version.active_replicas():
                    if version.replicas[idx].state in _RETIRABLE:
                        version.set_replica(idx, ReplicaState.UnloadEnvoyRequested)
        if publish or any(v.replicas_in(ReplicaState.UnloadEnvoyRequested) for v in record.versions):
            self._publish(record)
        self._update_states(record)
        if record.deleted and all(not v.active_replicas() for v in record.versions):
            del self.models[record.name]
            log.info("model removed", model=record.name)
        self._model_changed(record.name)

    @staticmethod
    def _update_states(record: ModelRecord) -> None:
        for version in record.versions:
            _update_state(version, latest=version is record.latest and not record.deleted)

    def _publish(self, record: ModelRecord) -> None:
        route = self._route_for(record)
        requirements = self._routes.publish(route)
        if self._envoy.acked(requirements):
            self._awaiting_envoy.pop(record.name, None)
            if any(v.replicas_in(*_AWAITING_CONFIRMATION) for v in record.versions):
                self._route_confirmed_later(record.name)
        else:
            self._awaiting_envoy[record.name] = requirements

    def _route_confirmed_later(self, name: str) -> None:
        # Already applied everywhere (e.g. nothing changed): confirm on the next loop turn, so the
        # caller finishes its own state update first.
        loop = asyncio.get_running_loop()

        def confirm() -> None:
            record = self.models.get(name)
            if record is not None and name not in self._awaiting_envoy:
                self._route_confirmed(record)

        loop.call_soon(confirm)

    def _route_for(self, record: ModelRecord) -> Route:
        if record.deleted:
            return Route(record.name, ())
        serving = [
            v
            for v in reversed(record.versions)
            if v.replicas_in(ReplicaState.Loaded, ReplicaState.Available, ReplicaState.LoadedUnavailable)
            or v.replicas_in(ReplicaState.Draining)
        ]
        # The newest serving version, plus (during a roll-out) the newest older one still serving.
        chosen = serving[:2] if serving and serving[0] is record.latest else serving[:1]
        counts = [len(self._routable_replicas(v)) for v in chosen]
        total = sum(counts) or 1
        splits: list[Split] = []
        remaining = 100
        for i, (version, count) in enumerate(zip(chosen, counts, strict=True)):
            weight = remaining if i == len(chosen) - 1 else 100 * count // total
            remaining -= weight
            endpoints = tuple(self._endpoint(version.server, idx) for idx in self._routable_replicas(version))
            if endpoints and weight > 0:
                splits.append(Split(version.versioned_name, weight, endpoints))
        return Route(record.name, tuple(splits))

    def _routable_replicas(self, version: ModelVersion) -> list[int]:
        server = self.servers.get(version.server)
        states = (
            ReplicaState.Loaded,
            ReplicaState.Available,
            ReplicaState.LoadedUnavailable,
            ReplicaState.Draining,
        )
        return [i for i in version.replicas_in(*states) if server is not None and i in server.replicas]

    def _endpoint(self, server: str, idx: int) -> Endpoint:
        config = self.servers[server].replicas[idx].config
        return Endpoint(config.inferenceSvc, config.inferenceHttpPort, config.inferenceGrpcPort)

    # -- housekeeping ------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links.values():
            link.close()
        self._store.close()


# Replica states that change once Envoy holds the model's current route.
_AWAITING_CONFIRMATION = (
    ReplicaState.Loaded,
    ReplicaState.LoadedUnavailable,
    ReplicaState.UnloadEnvoyRequested,
)

# Replica states of a superseded version that are taken out of the route before unloading.
_RETIRABLE = frozenset(
    {
        ReplicaState.Loaded,
        ReplicaState.Available,
        ReplicaState.LoadedUnavailable,
        ReplicaState.Draining,
        ReplicaState.LoadRequested,
        ReplicaState.Loading,
    }
)

_EVENT_TRANSITIONS: dict[int, tuple[tuple[ReplicaState, ...], ReplicaState]] = {
    Event.LOADED: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.Loaded),
    Event.LOAD_FAILED: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.LoadFailed),
    Event.LOAD_FAIL_MEMORY: ((ReplicaState.Loading, ReplicaState.LoadRequested), ReplicaState.LoadFailed),
    Event.UNLOADED: ((ReplicaState.Unloading,), ReplicaState.Unloaded),
    Event.UNLOAD_FAILED: ((ReplicaState.Unloading,), ReplicaState.UnloadFailed),
}


def _update_state(version: ModelVersion, *, latest: bool) -> None:
    """Model state from replica states (reference digest §6.2)."""
    states = [r.state for r in version.replicas.values()]
    if not latest:
        if ReplicaState.UnloadFailed in states:
            version.set_state(ModelState.ModelTerminateFailed, _newest_reason(version))
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
        version.set_state(ModelState.ModelFailed, _newest_reason(version))
    elif version.desired_replicas == 0 and minimum == 0 and not available:
        version.set_state(ModelState.ModelScaledDown)
    elif available and (available >= version.desired_replicas or (minimum and available >= minimum)):
        version.set_state(ModelState.ModelAvailable, version.schedule_error)
    else:
        version.set_state(ModelState.ModelProgressing)


def _replacements_ready(version: ModelVersion) -> bool:
    """Draining replicas may go: the others finished loading and at least one is Available."""
    if not version.replicas_in(ReplicaState.Draining):
        return False
    loading = version.replicas_in(ReplicaState.LoadRequested, ReplicaState.Loading)
    return not loading and bool(version.replicas_in(ReplicaState.Available))


def _newest_reason(version: ModelVersion) -> str:
    failed = [r for r in version.replicas.values() if r.reason]
    return max(failed, key=lambda r: r.timestamp).reason if failed else ""


def _operation(
    kind: int, name: str, number: int, spec: scheduler_pb2.Model | None
) -> agent_pb2.ModelOperationMessage:
    model = spec if spec is not None else scheduler_pb2.Model(meta=scheduler_pb2.MetaData(name=name))
    return agent_pb2.ModelOperationMessage(
        operation=kind,  # type: ignore[arg-type]
        modelVersion=agent_pb2.ModelVersion(model=model, version=number),
    )


def _normalised(model: scheduler_pb2.Model) -> scheduler_pb2.Model:
    copy = scheduler_pb2.Model()
    copy.CopyFrom(model)
    if not copy.HasField("deploymentSpec"):
        copy.deploymentSpec.replicas = 1
    return copy


def _same_model_spec(current: scheduler_pb2.Model, new: scheduler_pb2.Model) -> bool:
    """Equal model specs, ignoring runtime info the agent reported (reference §4.6)."""
    a, b = scheduler_pb2.ModelSpec(), scheduler_pb2.ModelSpec()
    a.CopyFrom(current.modelSpec)
    b.CopyFrom(new.modelSpec)
    a.ClearField("modelRuntimeInfo")
    b.ClearField("modelRuntimeInfo")
    return a == b
