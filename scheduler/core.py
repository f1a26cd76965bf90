"""The scheduler's use cases: model load/unload, server declarations, agent events, confirmations.

Transport-free: gRPC servicers (``scheduler/api.py``, ``scheduler/agent_api.py``) only convert
messages and call in here. Everything runs on one event loop, so state is mutated without locks;
nothing here awaits while holding a half-updated model. The parts it ties together each have one
job and call nothing back: the state machine (``lifecycle``), LoadModel revisions (``revisions``),
route plans (``routing``), agent membership (``membership``), the operations sent to agents and
their answers (``agent_operations``), placement (``placement``) and the store (``store``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import structlog

from apis import names
from apis.limits import MAX_MODELS, MAX_REPLICAS
from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.routing import Route, RouteSink
from apis.validation import InvalidResource, validate_model, validate_name, validate_server
from scheduler import lifecycle, revisions, scheduling
from scheduler.agent_operations import AgentOperations
from scheduler.errors import NotFound
from scheduler.listeners import Listeners
from scheduler.membership import AgentLink, Membership
from scheduler.placement import PlacementPolicy, Policy
from scheduler.revisions import Revision
from scheduler.routing import Routing, model_route
from scheduler.server_scaling import ScalingRequest, ScalingSettings, ServerScaler
from scheduler.state import LoadedIndex, ModelRecord, ReplicaState, Server
from scheduler.store import StateStore

log = structlog.get_logger("meshserve.scheduler")

__all__ = ["AgentLink", "ModelNotFound", "Scheduler"]


class ModelNotFound(NotFound):
    pass


class Scheduler:
    """Every use case of the scheduler, over the collaborators named in the module docstring.

    Mutated only on the event loop. Status streams subscribe with :meth:`on_model_change` and
    :meth:`on_server_change`; the composition root wires the route sink and the store.
    """

    def __init__(
        self,
        sink: RouteSink,
        *,
        policy: PlacementPolicy | None = None,
        agent_grace_seconds: float = 15.0,
        store: StateStore | None = None,
        server_scaling: ScalingSettings | None = None,
    ) -> None:
        self._routing = Routing(sink, self._route_confirmed, self._route_rejected)
        self._members = Membership(grace_seconds=agent_grace_seconds, on_expired=self._replica_expired)
        self._agents = AgentOperations(self._members, self._routing)
        self._policy = policy or Policy()
        self.models: dict[str, ModelRecord] = {}
        self._loaded = LoadedIndex()
        # Models that may lack a placement (every change ends in _refresh, which adds the model): a
        # retry checks these, not all models (a scan per event batch is O(models) per unload).
        self._retry_candidates: dict[str, None] = {}
        self._model_listeners = Listeners[str]()
        self._server_listeners = Listeners[str]()
        self._route_listeners = Listeners[str]()
        self._scaling_listeners = Listeners[ScalingRequest]()
        self._scaler = ServerScaler(server_scaling or ScalingSettings())
        self._override: Callable[[str], Route | None] = lambda _: None
        self._store = store or StateStore(None)
        self._store.bind(lambda: self.models, lambda: self.servers)

    @property
    def servers(self) -> dict[str, Server]:
        return self._members.servers

    def commit(self) -> None:
        """Make every accepted change durable now (the API calls this before answering)."""
        self._store.flush()

    async def committed(self) -> None:
        """Make every accepted change durable, in one commit shared with every caller of the same
        event-loop turn (group commit); returns once it is committed (the API awaits this)."""
        await self._store.group_commit()

    async def committing(self) -> None:
        """Wait for the durable commit in flight, if any (:meth:`StateStore.committing`).

        Agent operations wait for it: in a burst of API calls a commit is nearly always in flight,
        so the operations of concurrent calls leave together, one message per agent instead of one
        per model; after a quiet spell nothing is in flight and they leave at once (decision 0031)."""
        await self._store.committing()

    def restore(self) -> None:
        """Reload persisted state and re-publish its routes, before Envoy or any agent connects.

        Replicas come back disconnected: their agents get the usual grace period to re-subscribe
        (and re-adopt what they hold) before their models are moved.
        """
        self.models, self._members.servers = self._store.load()
        self._members.restored()
        for record in self.models.values():
            self._loaded.update(record)
            self._retry_candidates[record.name] = None
            self._routing.publish(model_route(record, self.servers))
        log.info("state restored", models=len(self.models), servers=len(self.servers))

    def model(self, name: str) -> ModelRecord:
        validate_name(name)
        record = self.models.get(name)
        if record is None:
            raise ModelNotFound(f"model {name} not found")
        return record

    def server(self, name: str) -> Server:
        validate_name(name, kind="server")
        server = self.servers.get(name)
        if server is None:
            raise NotFound(f"server {name} not found")
        return server

    def route(self, name: str) -> Route | None:
        """The latest route plan for a ``seldon-model`` value."""
        return self._routing.plan(name)

    # -- routes other use cases own (experiments, pipelines) ---------------------------------------

    @property
    def routing(self) -> Routing:
        """Route plans: other use cases publish their own routes (``<e>.experiment``, ...) here."""
        return self._routing

    def own_route(self, name: str) -> Route | None:
        """The route a model would have on its own (no experiment taking it over)."""
        record = self.models.get(name)
        return model_route(record, self.servers) if record is not None else None

    def set_route_override(self, override: Callable[[str], Route | None]) -> None:
        """Let another use case take over a model's endpoint: ``override(model)`` returns the
        route to publish instead of the model's own, or None."""
        self._override = override

    def reroute(self, name: str) -> None:
        """Re-plan a model's endpoint now (an override started or stopped)."""
        record = self.models.get(name)
        if record is not None:
            self._refresh(record)

    def on_route_confirmed(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """``listener(route name)`` after every Envoy ACKed a route's latest plan."""
        return self._route_listeners.add(listener)

    def loaded_per_replica(self, server: str) -> dict[int, int]:
        """How many model versions each replica of ``server`` holds (loading to unloading)."""
        return self._loaded.per_replica(server)

    # -- listeners (status streams) ----------------------------------------------------------------

    def on_model_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        return self._model_listeners.add(listener)

    def on_server_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        return self._server_listeners.add(listener)

    def on_scaling_request(self, listener: Callable[[ScalingRequest], None]) -> Callable[[], None]:
        """``listener(request)`` whenever the scheduler asks for a server's replica count to change."""
        return self._scaling_listeners.add(listener)

    def _model_changed(self, name: str) -> None:
        self._store.model_changed(name)
        self._model_listeners.notify(name)

    def _server_changed(self, name: str, *, persist: bool = True) -> None:
        if persist:
            self._store.server_changed(name)
        self._server_listeners.notify(name)

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
        model = revisions.normalised(model)
        name = model.meta.name
        record = self.models.get(name)
        if record is None:
            if len(self.models) >= MAX_MODELS:
                raise InvalidResource(
                    f"model {name}: {MAX_MODELS} models are loaded already; the limit (unload one first)"
                )
            record = self.models[name] = revisions.new_record(model)
        else:
            revision = revisions.revise(record, model)
            if revision is Revision.UNCHANGED:
                return  # identical: loading twice is a no-op
            if revision is Revision.METADATA:
                self._model_changed(name)
                return
        log.debug("model accepted", model=name, version=record.latest.number)
        self._schedule(record)

    def scale_model(self, name: str, replicas: int) -> None:
        """The autoscaler's replica count for a model: kept beside its spec (which stays as the
        user wrote it), persisted, and placed like a change of ``replicas``."""
        record = self.model(name)
        if record.deleted:
            raise ModelNotFound(f"model {name} is being unloaded")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise InvalidResource(f"a model scales to 1..{MAX_REPLICAS} replicas, not {replicas}")
        record.latest.scaled_replicas = replicas
        log.info(
            "model scaled", model=name, replicas=replicas, spec=record.latest.spec.deploymentSpec.replicas
        )
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
            server = self._members.declare(notify)
            log.info("server declared", server=notify.name, replicas=notify.expectedReplicas)
            self._move_off_retiring(server)
            self._members.forget_if_empty(server)
            self._server_changed(notify.name)
        self._retry_unsatisfied()

    def _move_off_retiring(self, server: Server) -> None:
        for record in scheduling.on_retiring(list(self.models.values()), server):
            self._schedule(record)

    async def drain(self, server_name: str, idx: int) -> None:
        """Move every model off one replica (AgentDrain), returning once the replica holds none.

        The replica takes no new model; each model on it is placed elsewhere and keeps being served
        here (``Draining``) until its replacement is Available, then unloaded here (make before
        break). A model with nowhere else to go keeps serving here and is waited for: capacity may
        still appear (a replica registering, memory freed, the server scaled up). Callers bound the
        wait (``asyncio.timeout``; the agent's call deadline).
        """
        server = self.servers.get(server_name)
        replica = server.replicas.get(idx) if server else None
        if server is None or replica is None:
            raise ModelNotFound(f"replica {server_name}/{idx} is not registered")
        replica.retiring = replica.draining = True
        log.info("replica draining", server=server_name, replica=idx)
        self._move_off_retiring(server)
        self._server_changed(server_name, persist=False)
        changed = asyncio.Event()
        stop_listening = self.on_model_change(lambda _: changed.set())
        try:
            while self._loaded.per_replica(server_name).get(idx, 0):
                changed.clear()
                await changed.wait()
        finally:
            stop_listening()
        log.info("replica drained", server=server_name, replica=idx)

    def expire_stuck(self, deadline_s: float, now: float | None = None) -> None:
        """Operations an agent did not answer within ``deadline_s`` are sent once more, then failed
        (a load: ModelFailed with the reason; an unload: UnloadFailed), so no replica waits forever."""
        since = (time.time() if now is None else now) - deadline_s
        for record in list(self.models.values()):
            if self._agents.resend_stuck(record, since, deadline_s):
                self._refresh(record)

    def scale_servers(self) -> list[ScalingRequest]:
        """Ask the controller for more or fewer server replicas where models need it (called
        periodically: the scale-down grace period is measured between calls)."""
        requests = self._scaler.decide(self.servers.values(), self.models.values(), self._loaded.per_replica)
        for request in requests:
            log.info("server scaling request", **vars(request))
            self._scaling_listeners.notify(request)
        return requests

    # -- agent membership --------------------------------------------------------------------------

    def agent_connected(self, request: agent_pb2.AgentSubscribeRequest, identity: str = "") -> AgentLink:
        link, replica = self._members.connect(request, identity)
        for record in self._agents.adopt(self.models, link, replica, request):
            self._refresh(record)
        self._server_changed(link.server)
        self._retry_unsatisfied()
        return link

    def agent_disconnected(self, link: AgentLink) -> None:
        self._members.disconnect(link)

    def _replica_expired(self, server: str, idx: int) -> None:
        for record in list(self.models.values()):
            if not lifecycle.forget_replica(record, server, idx):
                continue
            if record.deleted:
                self._refresh(record)
            else:
                self._schedule(record)
        self._server_changed(server)
        self._retry_unsatisfied()

    def agent_event(self, event: agent_pb2.ModelEventMessage) -> None:
        self.agent_events((event,))

    def agent_events(self, events: Iterable[agent_pb2.ModelEventMessage]) -> None:
        """Apply agents' events in order, then refresh each model they touched once."""
        applied = self._agents.apply_events(self.models, events)
        for server in applied.servers:
            # Free memory is re-reported by the agent on reconnect: not worth a write per event.
            self._server_changed(server, persist=False)
        for record in applied.touched.values():
            self._refresh(record)
        if applied.freed:
            self._retry_unsatisfied()  # memory was freed

    # -- Envoy -------------------------------------------------------------------------------------

    def _route_confirmed(self, name: str, route: Route, released: frozenset[str]) -> None:
        """Every Envoy holds ``route``: promote what it serves, unload what no route names any more."""
        affected = {name, *(names.model_of(target) for target in released)}
        for model in sorted(affected):
            record = self.models.get(model)
            if record is not None:
                self._refresh(record)
        self._route_listeners.notify(name)

    def _route_rejected(self, name: str, route: Route, reason: str) -> None:
        """An Envoy refused ``route``: its new replicas cannot serve; the model says why."""
        log.warning("route rejected by envoy", route=name, reason=reason)
        for model in sorted({names.model_of(target) for target in route.targets}):
            record = self.models.get(model)
            if record is not None:
                lifecycle.route_refused(record, route.targets, reason)
                self._refresh(record)

    # -- scheduling --------------------------------------------------------------------------------

    def _schedule(self, record: ModelRecord) -> None:
        if not record.deleted:
            for version, replica in scheduling.place(record, self.servers, self._policy):
                self._agents.send_load(version, replica)
        self._refresh(record)

    def _retry_unsatisfied(self) -> None:
        """Retry models that failed to schedule or lack replicas (capacity may have appeared).

        Only the models changed since the last retry, and those still unsatisfied then, can be:
        a retried model is refreshed, and so checked again next time while it stays unsatisfied."""
        candidates = [self.models[name] for name in self._retry_candidates if name in self.models]
        self._retry_candidates.clear()
        for record in scheduling.unsatisfied(candidates):
            self._schedule(record)

    # -- routes and states -------------------------------------------------------------------------

    def _refresh(self, record: ModelRecord) -> None:
        """Recompute states, retire superseded versions, publish the route, notify listeners."""
        self._agents.settle_routes(record)  # what Envoy holds may already make a version Available
        lifecycle.update_states(record)
        retired = lifecycle.retire_superseded(record)
        override = None if record.deleted else self._override(record.name)
        if self._routing.publish(override or model_route(record, self.servers)) or retired:
            # Replicas that no route reaches any more can go now. With no new plan and nothing
            # retired, the settle above already saw all there is (most refreshes in a burst).
            self._agents.settle_routes(record)
            lifecycle.update_states(record)
        lifecycle.prune_terminated(record)
        self._loaded.update(record)
        self._retry_candidates[record.name] = None
        if record.deleted and all(not v.active_replicas() for v in record.versions):
            del self.models[record.name]
            self._loaded.forget(record.name)
            self._retry_candidates.pop(record.name, None)
            log.info("model removed", model=record.name)
        self._model_changed(record.name)

    async def close(self) -> None:
        await self._members.close()
        self._store.close()
