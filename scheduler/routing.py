"""Route planning: desired state in, route plans keyed by route name out, ACKs tracked per route.

A route is named by what callers put in ``seldon-model``: a model, ``<name>.experiment``,
``<name>.pipeline``. :class:`Routing` keeps, per route name, the latest plan and the plan Envoy
is known to hold, and a reverse index from each target (``iris_1``) to the routes whose plans —
held or pending — name it. A target's replica may be unloaded only when no route still routes to
it (:meth:`Routing.routes_to`), i.e. every route that named it has been ACKed without it.

Confirmation is one-way: the sink completes a future per publication; :class:`Routing` turns the
latest one into an ``on_confirmed(name, route, released)`` hook call. It never calls back into the
use cases otherwise, and never asks the sink for a route.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from apis.routing import Endpoint, Route, RouteSink, Split, millionths
from scheduler.autoscaling import autoscales
from scheduler.lifecycle import ROUTABLE
from scheduler.state import ModelRecord, ModelVersion, Server

# (route name, the route Envoy now holds, targets no route names any more)
ConfirmHook = Callable[[str, Route, frozenset[str]], None]
# (route name, the route an Envoy refused, Envoy's reason)
RejectHook = Callable[[str, Route, str], None]


@dataclass(slots=True)
class _RouteState:
    held: Route | None = None  # what every Envoy has ACKed
    pending: list[Route] = field(default_factory=list)  # published, not yet ACKed (latest last)
    future: asyncio.Future[None] | None = None


class Routing:
    """Latest plan, held plan and reverse index per route name. Event-loop only."""

    def __init__(self, sink: RouteSink, on_confirmed: ConfirmHook, on_rejected: RejectHook) -> None:
        self._sink = sink
        self._on_confirmed = on_confirmed
        self._on_rejected = on_rejected
        self._routes: dict[str, _RouteState] = {}
        self._naming: dict[str, set[str]] = {}  # target -> route names whose plans name it

    def plan(self, name: str) -> Route | None:
        """The latest plan published for ``name``; None when there is none or it is a removal."""
        state = self._routes.get(name)
        latest = (state.pending[-1] if state.pending else state.held) if state is not None else None
        return latest if latest is not None and latest.splits else None

    def held(self, name: str) -> Route | None:
        state = self._routes.get(name)
        return state.held if state is not None else None

    def publish(self, route: Route) -> bool:
        """Make ``route`` the plan for its name; a plan equal to the latest one is not resent.
        True when a new plan went out."""
        state = self._routes.setdefault(route.name, _RouteState())
        latest = state.pending[-1] if state.pending else state.held
        if latest == route or (latest is None and not route.splits):
            if latest is None:
                del self._routes[route.name]
            return False
        state.pending.append(route)
        for target in route.targets:
            self._naming.setdefault(target, set()).add(route.name)
        future = self._sink.publish(route)
        state.future = future
        future.add_done_callback(lambda done: self._confirmed(route.name, route, done))
        return True

    def routes_to(self, target: str, endpoint: Endpoint) -> bool:
        """Whether any route Envoy may hold (held or pending) sends ``target`` to ``endpoint``."""
        for name in self._naming.get(target, ()):
            state = self._routes[name]
            plans = [*state.pending, *([state.held] if state.held is not None else [])]
            if any(plan.routes_to(target, endpoint) for plan in plans):
                return True
        return False

    def held_routes_to(self, target: str, endpoint: Endpoint) -> bool:
        """Whether some route every Envoy has ACKed sends ``target`` to ``endpoint``."""
        for name in self._naming.get(target, ()):
            held = self._routes[name].held
            if held is not None and held.routes_to(target, endpoint):
                return True
        return False

    def names_of(self, target: str) -> frozenset[str]:
        """Route names whose held or pending plans name ``target``."""
        return frozenset(self._naming.get(target, ()))

    def _confirmed(self, name: str, route: Route, future: asyncio.Future[None]) -> None:
        state = self._routes.get(name)
        if future.cancelled() or state is None or state.future is not future:
            return  # superseded by a later publication
        error = future.exception()
        if error is not None:
            # Envoy kept what it had; the plan stays pending (it may hold part of it) until the
            # next publication of this name.
            state.future = None
            self._on_rejected(name, route, str(error))
            return
        before = {t for plan in [*state.pending, state.held] if plan is not None for t in plan.targets}
        state.pending.clear()
        state.future = None
        state.held = route if route.splits else None
        if state.held is None:
            del self._routes[name]
        released = frozenset(t for t in before - route.targets if self._unname(t, name))
        self._on_confirmed(name, route, released)

    def _unname(self, target: str, name: str) -> bool:
        """Drop ``name`` from ``target``'s index; True when no route names the target any more."""
        names = self._naming.get(target)
        if names is None:
            return True
        names.discard(name)
        if names:
            return False
        del self._naming[target]
        return True


def model_route(record: ModelRecord, servers: dict[str, Server]) -> Route:
    """A model's own route: its newest serving version, plus (during a roll-out) the newest older
    one still serving, weighted by their routable replica counts."""
    if record.deleted:
        return Route(record.name)
    serving = [v for v in reversed(record.versions) if v.replicas_in(*ROUTABLE)]
    chosen = serving[:2] if serving and serving[0] is record.latest else serving[:1]
    endpoints = [_endpoints(v, servers) for v in chosen]
    live = [(v, e) for v, e in zip(chosen, endpoints, strict=True) if e]
    if not live:
        return Route(record.name)
    weights = millionths([len(e) for _, e in live])
    # Clusters of its own where its load is read per version (Split): it can autoscale (load
    # reports), or a replica may evict it (the agent's exact in-flight gauge; decision 0008).
    scales = autoscales(record.latest.spec.deploymentSpec)
    return Route(
        record.name,
        tuple(
            Split(v.versioned_name, w, e, own_clusters=scales or _evicting(e))
            for (v, e), w in zip(live, weights, strict=True)
        ),
    )


def _evicting(endpoints: tuple[Endpoint, ...]) -> bool:
    """Whether any of these replicas overcommits (it has a reload listener, decision 0014)."""
    return any(e.reload_http_port or e.reload_grpc_port for e in endpoints)


def _endpoints(version: ModelVersion, servers: dict[str, Server]) -> tuple[Endpoint, ...]:
    server = servers.get(version.server)
    if server is None:
        return ()
    replicas = server.replicas
    return tuple(replicas[idx].endpoint for idx in version.replicas_in(*ROUTABLE) if idx in replicas)
