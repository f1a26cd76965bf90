"""What the scheduler asks of Envoy: one route per model, split over versioned targets.

This is the contract between the scheduler core and the xDS layer. The scheduler says *what*
should be routable; :class:`RoutePublisher` turns it into clusters, scopes and route
configurations in the :class:`ResourceCache` and returns the versions to wait for.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsserver import resources
from xdsserver.cache import Requirement, ResourceCache
from xdsserver.types import CLUSTER, SCOPED_ROUTE


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    http_port: int
    grpc_port: int


@dataclass(frozen=True, slots=True)
class Split:
    target: str  # versioned model name as the model server knows it, e.g. "iris_1"
    weight: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the seldon-model header value, e.g. "iris"
    splits: tuple[Split, ...]


class RoutePublisher:
    """Keeps the cache's clusters and scopes equal to the routes the scheduler wants.

    Make-before-break is left to the stream server's send order (clusters before scopes,
    cluster removals last); this class only computes the resources.
    """

    def __init__(self, cache: ResourceCache) -> None:
        self._cache = cache
        self._clusters_of: dict[str, set[str]] = {}  # route name -> cluster names it uses
        self._routes: dict[str, Route] = {}

    def route(self, name: str) -> Route | None:
        return self._routes.get(name)

    def publish(self, route: Route) -> list[Requirement]:
        if not route.splits:
            return self.remove(route.name)
        clusters = {
            name: cluster
            for split in route.splits
            for name, cluster in resources.clusters_for(split.target, split.endpoints).items()
        }
        stale = self._clusters_of.get(route.name, set()) - clusters.keys()
        self._clusters_of[route.name] = set(clusters)
        self._routes[route.name] = route
        return self._cache.apply(
            upserts=[
                *((CLUSTER, name, cluster) for name, cluster in clusters.items()),
                (SCOPED_ROUTE, route.name, resources.scope_for(route)),
            ],
            removals=[(CLUSTER, name) for name in stale],
        )

    def remove(self, name: str) -> list[Requirement]:
        clusters = self._clusters_of.pop(name, set())
        self._routes.pop(name, None)
        return self._cache.apply(
            removals=[(SCOPED_ROUTE, name), *((CLUSTER, c) for c in sorted(clusters))],
        )
