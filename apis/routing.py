"""The contract between the scheduler's routing layer and a route sink (the xDS server).

A leaf module: value types and Protocols only, no Envoy protos, so the scheduler's core can depend
on it without loading ``envoy.*``.

- A :class:`Route` is named by what callers put in ``seldon-model`` (``iris``, ``ab.experiment``,
  ``p.pipeline``) and splits traffic over versioned targets in integer millionths.
- A :class:`RouteSink` makes routes real. :meth:`RouteSink.publish` returns a future the sink
  completes once every connected Envoy holds that route (the one-way ACK path, like
  go-control-plane's watches); publishing the same name again supersedes (cancels) the earlier
  future. The caller never asks the sink for the route back: it keeps its own plans.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Weights are integer millionths: a share of 1/3 is 333,333, never rounded to whole percents.
WEIGHT_SCALE = 1_000_000


class InvalidWeights(ValueError):
    """Weights that cannot split traffic: none given, negative, or all zero."""


class RouteRejected(Exception):
    """An Envoy refused part of a published route; the message carries Envoy's reason."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model-server replica's inference ports, and its agent's reload ports on the same host
    (0: none). Envoy tries the model server first and the reload listener only when the model
    server answered "no such model" (an overcommitted replica evicted it; decision 0014)."""

    host: str
    http_port: int
    grpc_port: int
    reload_http_port: int = 0
    reload_grpc_port: int = 0


@dataclass(frozen=True, slots=True)
class Split:
    """A slice of a route's traffic to one target, served by ``endpoints``.

    ``own_clusters``: the target's load is read per target from its clusters (Envoy's load
    reports for a model that can autoscale, the in-flight gauge an overcommitting agent reads
    before it evicts), so it gets clusters of its own. Otherwise it shares
    the clusters of its replica set with every other target placed on exactly those replicas
    (decision 0008): no per-target cluster costs Envoy memory or an extra xDS message.
    """

    target: str  # the name the model server knows, e.g. "iris_1"
    weight: int  # millionths of the route's traffic
    endpoints: tuple[Endpoint, ...]
    own_clusters: bool = False


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """Copy ``fraction`` (millionths) of a route's requests to the route ``route``; its answers
    are discarded."""

    route: str
    fraction: int


@dataclass(frozen=True, slots=True)
class Route:
    """What Envoy should do with requests whose ``seldon-model`` is ``name``; no splits: no route."""

    name: str
    splits: tuple[Split, ...] = ()
    mirror: MirrorPolicy | None = None

    def __post_init__(self) -> None:
        if self.splits and sum(s.weight for s in self.splits) != WEIGHT_SCALE:
            raise InvalidWeights(f"route {self.name}: split weights must add up to {WEIGHT_SCALE}")
        if any(s.weight <= 0 or not s.endpoints for s in self.splits):
            raise InvalidWeights(f"route {self.name}: every split needs a positive weight and endpoints")
        if self.mirror is not None and not 0 < self.mirror.fraction <= WEIGHT_SCALE:
            raise InvalidWeights(f"route {self.name}: a mirror fraction must be in (0, {WEIGHT_SCALE}]")

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(s.target for s in self.splits)

    def routes_to(self, target: str, endpoint: Endpoint) -> bool:
        return any(s.target == target and endpoint in s.endpoints for s in self.splits)


def millionths(shares: Sequence[int]) -> list[int]:
    """Divide :data:`WEIGHT_SCALE` in proportion to ``shares`` (largest remainder, exact total)."""
    if not shares or any(s < 0 for s in shares):
        raise InvalidWeights("weights must be a non-empty list of non-negative numbers")
    total = sum(shares)
    if total == 0:
        raise InvalidWeights("all weights are zero: no traffic could be routed")
    exact = [s * WEIGHT_SCALE for s in shares]
    result = [e // total for e in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] % total), i))
    for i in by_remainder[: WEIGHT_SCALE - sum(result)]:
        result[i] += 1
    return result


class RouteSink(Protocol):
    """Where route plans go. Owned by the composition root; called on the event loop only."""

    def publish(self, route: Route) -> asyncio.Future[None]:
        """Make ``route`` current (no splits: remove it); the future completes once every
        connected Envoy holds it, fails with :class:`RouteRejected` if an Envoy refuses it, and
        is cancelled if the name is published again first."""
        ...
