"""The xDS side of the routing contract: routes in, clusters and scopes in the cache, futures out.

:class:`RoutePublisher` is the :class:`apis.routing.RouteSink` the scheduler publishes to. It turns
each route into one scope plus the clusters of its targets and keeps clusters reference-counted:
a cluster is built once per replica set (or per target that has clusters of its own) and removed
only when no route names it any more (an experiment's routes and a model's own route, and every
model on the same replicas, share clusters).

ACKs flow one way: the publisher asks an :class:`AckQuorum` (the ADS server) whether every Envoy
holds a publication's resource versions, each time the quorum reports ACKs for those names, and
completes the publication's future then. Only the latest publication per route is kept waiting,
so the waiting set is bounded by the number of routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import Message

from apis.routing import Endpoint, Route, RouteRejected, RouteSink
from xdsserver import resources
from xdsserver.cache import Requirement, ResourceCache
from xdsserver.clusters import cluster_names, split_cluster_names, split_clusters
from xdsserver.types import CLUSTER, SCOPED_ROUTE

# Names an ACK covered, as (type URL, resource name); None: the set of Envoys changed.
AckedNames = Iterable[tuple[str, str]] | None
AckListener = Callable[[AckedNames], None]


class AckQuorum(Protocol):
    """What the publisher needs from the stream server (implemented by ``XdsServer``)."""

    def acked(self, requirements: Iterable[Requirement]) -> bool:
        """Whether every connected Envoy (and at least the configured minimum) holds these."""
        ...

    def held(self, requirements: Iterable[Requirement]) -> bool:
        """Whether every connected Envoy holds these; True when none is connected."""
        ...

    def on_ack(self, listener: AckListener) -> Callable[[], None]:
        """Call ``listener`` after every ACK and every connect/disconnect; returns an unsubscribe."""
        ...

    def on_reject(self, listener: Callable[[str, str, str], None]) -> Callable[[], None]:
        """Call ``listener(type_url, name, message)`` when an Envoy rejects one resource."""
        ...


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """What one cluster serves: a model version and its replicas, by the address Envoy dials."""

    target: str
    by_address: dict[tuple[str, int], Endpoint]


@dataclass(frozen=True, slots=True)
class _Switch:
    """The second step of a publication whose clusters Envoy did not hold yet: the route itself,
    and the clusters it stopped naming (removed with it)."""

    route: Route
    unused: list[str]


@dataclass(eq=False, slots=True)
class _Publication:
    route: str
    requirements: list[Requirement]
    future: asyncio.Future[None]
    then: _Switch | None = None  # set while only the clusters are out


class RoutePublisher:
    """Keeps the cache's clusters and scopes equal to the published routes; completes their futures.

    Make-before-break: a route's scope goes out only once every Envoy holds the clusters it names.
    A route switched to a cluster Envoy's workers do not have yet answers 503 ("no healthy
    upstream") until they do, which a target moving to another replica set's clusters would hit
    under traffic (tests/e2e/test_engine_replicas.py). So a publication whose clusters are new or
    changed sends them first and its scope (with the removal of clusters nothing names any more)
    after their ACK; one whose clusters Envoy holds already sends its scope at once.
    """

    def __init__(self, cache: ResourceCache, quorum: AckQuorum) -> None:
        self._cache = cache
        self._quorum = quorum
        self._clusters_of: dict[str, frozenset[str]] = {}  # route name -> cluster names it uses
        self._users: dict[str, set[str]] = {}  # cluster name -> route names using it
        self._targets: dict[str, ClusterTarget] = {}  # cluster name -> what it serves (load reports)
        self._waiting: dict[str, _Publication] = {}  # route name -> its latest publication
        self._by_resource: dict[tuple[str, str], set[_Publication]] = {}
        self._unsubscribe = [quorum.on_ack(self._acked), quorum.on_reject(self._rejected)]

    def publish(self, route: Route) -> asyncio.Future[None]:
        clusters, reused = self._clusters(route)
        now = frozenset(clusters) | {requirement.name for requirement in reused}
        for split in route.splits:
            if split.own_clusters:
                self._locate(split.target, split.endpoints)
        before = self._clusters_of.pop(route.name, frozenset())
        if now:
            self._clusters_of[route.name] = now
        for name in now - before:
            self._users.setdefault(name, set()).add(route.name)
        unused = [name for name in before - now if self._release(name, route.name)]
        previous = self._waiting.get(route.name)
        if previous is not None and previous.then is not None:  # superseded before its switch
            unused += [n for n in previous.then.unused if n not in self._users and n not in unused]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held = reused + self._cache.apply(
            upserts=[(CLUSTER, name, cluster) for name, cluster in clusters.items()]
        )
        # Staged only while some Envoy lacks the clusters: with none connected (a restarted
        # scheduler restoring) a withheld scope would be missing from a reconnecting Envoy's first
        # scopes, which removes the scope it still serves from (HTTP 404 until the switch).
        if not self._quorum.held(held):
            return self._wait(route.name, held, future, then=_Switch(route, unused))
        return self._switch(route, unused, future)

    def _clusters(self, route: Route) -> tuple[dict[str, Message], list[Requirement]]:
        """The clusters a route names: built, or reused as they are in the cache (a replica set's).

        A replica set's clusters are named by a digest of all they are built from, so ones in the
        cache are current: rebuilding and re-encoding them for every model placed on the same
        replicas was about a tenth of the scheduler's CPU in a 10,000-model batch."""
        built: dict[str, Message] = {}
        reused: list[Requirement] = []
        for split in route.splits:
            entries = {name: self._cache.get(CLUSTER, name) for name in split_cluster_names(split)}
            if not split.own_clusters and all(
                e is not None and e.resource is not None for e in entries.values()
            ):
                reused += [Requirement(CLUSTER, n, e.version) for n, e in entries.items() if e is not None]
            else:
                built.update(split_clusters(split))
        return built, reused

    def _switch(self, route: Route, unused: list[str], future: asyncio.Future[None]) -> asyncio.Future[None]:
        """The route's scope (or its removal) and the removal of the clusters it stopped naming."""
        scope: list[tuple[str, str, Message]] = (
            [(SCOPED_ROUTE, route.name, resources.scope_for(route))] if route.splits else []
        )
        requirements = self._cache.apply(
            upserts=scope,
            removals=[
                *([] if route.splits else [(SCOPED_ROUTE, route.name)]),
                *((CLUSTER, n) for n in unused),
            ],
        )
        return self._wait(route.name, requirements, future)

    def _release(self, cluster: str, route: str) -> bool:
        """Drop one route's use of a cluster; True when nothing uses it any more."""
        users = self._users.get(cluster)
        if users is None:
            return False
        users.discard(route)
        if users:
            return False
        del self._users[cluster]
        self._targets.pop(cluster, None)
        return True

    def _locate(self, target: str, endpoints: tuple[Endpoint, ...]) -> None:
        http_name, grpc_name = cluster_names(target)
        self._targets[http_name] = ClusterTarget(target, {(e.host, e.http_port): e for e in endpoints})
        self._targets[grpc_name] = ClusterTarget(target, {(e.host, e.grpc_port): e for e in endpoints})

    def locate(self, cluster: str) -> ClusterTarget | None:
        """The model version and replicas a live cluster of its own serves (None: not one of the
        routes', or a replica set's, shared by several versions)."""
        return self._targets.get(cluster)

    def users(self, cluster: str) -> frozenset[str]:
        """Routes that name a cluster (for tests and introspection)."""
        return frozenset(self._users.get(cluster, ()))

    # -- ACKs ---------------------------------------------------------------------------------------

    def _wait(
        self,
        route: str,
        requirements: list[Requirement],
        future: asyncio.Future[None],
        then: _Switch | None = None,
    ) -> asyncio.Future[None]:
        earlier = self._waiting.pop(route, None)
        if earlier is not None and earlier.future is not future:
            self._forget(earlier)
        if then is None and self._quorum.acked(requirements):
            future.set_result(None)
            return future
        publication = _Publication(route, requirements, future, then)
        self._waiting[route] = publication
        for requirement in requirements:
            self._by_resource.setdefault((requirement.type_url, requirement.name), set()).add(publication)
        return future

    def _forget(self, publication: _Publication | None) -> None:
        """Supersede a publication: its future is cancelled and it stops being checked."""
        if publication is not None:
            publication.future.cancel()
            self._forget_index(publication)

    def _acked(self, names: AckedNames) -> None:
        if names is None:
            candidates: set[_Publication] = set(self._waiting.values())
        else:
            candidates = set()
            for key in names:
                candidates |= self._by_resource.get(key, set())
        for publication in candidates:
            then = publication.then  # set: only its clusters are out, waiting to be held
            check = self._quorum.acked if then is None else self._quorum.held
            if self._waiting.get(publication.route) is publication and check(publication.requirements):
                del self._waiting[publication.route]
                self._forget_index(publication)
                if then is not None:  # its clusters are held: now the route itself
                    self._switch(then.route, then.unused, publication.future)
                else:
                    publication.future.set_result(None)

    def _forget_index(self, publication: _Publication) -> None:
        for requirement in publication.requirements:
            key = (requirement.type_url, requirement.name)
            waiting = self._by_resource.get(key)
            if waiting is not None:
                waiting.discard(publication)
                if not waiting:
                    del self._by_resource[key]

    def _rejected(self, type_url: str, name: str, message: str) -> None:
        kind = type_url.rsplit(".", 1)[-1]
        for publication in list(self._by_resource.get((type_url, name), ())):
            if self._waiting.get(publication.route) is publication:
                del self._waiting[publication.route]
                self._forget_index(publication)
                publication.future.set_exception(RouteRejected(f"Envoy rejected {kind} {name}: {message}"))

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for publication in list(self._waiting.values()):
            self._forget(publication)
        self._waiting.clear()


if TYPE_CHECKING:

    def _is_a_sink(publisher: RoutePublisher) -> RouteSink:
        return publisher
