"""An experiment's traffic plan: the routes it needs, computed from its members' own routes.

Pure: given the experiment and, per member (a model, or a pipeline when ``resourceType`` is
pipeline), whether it is ready and its own route (a model's version split, a pipeline's route to the
pipeline gateway, as the member would be routed alone), :func:`plan` returns the routes to publish.

- ``<name>.experiment`` splits over every candidate: a candidate's share (weight / sum) is split
  again over its own route's splits, all in integer millionths; a zero share is no split at all, so
  a 0 % arm receives nothing, and a single candidate receives everything;
- with a ``default``, that member's own endpoint (``<model>``, or ``<pipeline>.pipeline``) is
  replaced by the same split (a takeover);
- with a mirror, every route of the experiment copies ``percent`` of its requests to
  ``<mirror endpoint>.mirror``, a route to the mirror's own splits whose responses Envoy discards.

When a candidate is not ready there is no split: the experiment endpoint is not routed and the
default serves alone (Seldon's fallback); a mirror that is not ready is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from apis.routing import WEIGHT_SCALE, MirrorPolicy, Route, Split, millionths
from experiments.model import Experiment

MIRROR_SUFFIX = ".mirror"


@dataclass(frozen=True, slots=True)
class Member:
    """What the plan needs of one member (model or pipeline)."""

    ready: bool
    reason: str  # why it is not ready ("" when ready)
    route: Route | None  # the model's own route (None: not routable)


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    routes: tuple[Route, ...]  # every route the experiment owns now (experiment, takeover, mirror)
    candidates_ready: bool
    mirror_ready: bool
    problems: tuple[str, ...]  # what keeps the experiment inactive, in words

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)


def mirror_route_name(endpoint: str) -> str:
    """The mirror's route, named after the mirror's own endpoint (``iris.mirror``,
    ``p.pipeline.mirror``), so a model and a pipeline of the same name never share one."""
    return endpoint + MIRROR_SUFFIX


def plan(experiment: Experiment, members: Mapping[str, Member]) -> TrafficPlan:
    problems: list[str] = []
    kind = experiment.resource_type.kind
    for candidate in experiment.candidates:
        member = members.get(candidate.name)
        if member is None or not member.ready or member.route is None or not member.route.splits:
            problems.append(f"candidate {candidate.name} is not available{_because(member, kind)}")
    candidates_ready = not problems
    mirror_route: Route | None = None
    mirror = experiment.mirror
    if mirror is not None:
        member = members.get(mirror.name)
        if member is not None and member.ready and member.route is not None and member.route.splits:
            mirror_route = Route(mirror_route_name(experiment.member_route(mirror.name)), member.route.splits)
        else:
            problems.append(f"mirror {mirror.name} is not available{_because(member, kind)}")
    if not candidates_ready:
        return TrafficPlan((), False, mirror is None or mirror_route is not None, tuple(problems))
    splits = _splits(experiment, members)
    policy = (
        MirrorPolicy(mirror_route.name, mirror.percent * WEIGHT_SCALE // 100)
        if mirror is not None and mirror_route is not None
        else None
    )
    routes = [Route(experiment.route_name, splits, policy)]
    if experiment.default_route is not None:
        routes.append(Route(experiment.default_route, splits, policy))
    if mirror_route is not None:
        routes.append(mirror_route)
    return TrafficPlan(tuple(routes), True, mirror is None or mirror_route is not None, tuple(problems))


def _splits(experiment: Experiment, members: Mapping[str, Member]) -> tuple[Split, ...]:
    """Candidate shares times each candidate's own version weights, exact in millionths."""
    shares = millionths([c.weight for c in experiment.candidates])
    parts: list[tuple[Split, int]] = []
    for candidate, share in zip(experiment.candidates, shares, strict=True):
        route = members[candidate.name].route
        assert route is not None  # checked by the caller: every candidate is routable
        parts += [(split, share * split.weight) for split in route.splits]
    weights = millionths([weight for _, weight in parts])
    # replace(): a split keeps its clusters (own or its replica set's), already held by Envoy.
    return tuple(
        replace(split, weight=weight) for (split, _), weight in zip(parts, weights, strict=True) if weight > 0
    )


def _because(member: Member | None, kind: str = "model") -> str:
    if member is None:
        return f" (no such {kind})"
    return f" ({member.reason})" if member.reason else ""
