"""An experiment's traffic plan: the routes it needs, computed from its members' own routes.

Pure: given the experiment and, per member model, whether it is ready and its own route (its
version split, as the model would be routed alone), :func:`plan` returns the routes to publish.

- ``<name>.experiment`` splits over every candidate: a candidate's share (weight / sum) is split
  again over its own versions, all in integer millionths; a zero share is no split at all, so a
  0 % arm receives nothing;
- with a ``default``, that model's own route is replaced by the same split (a takeover);
- with a mirror, every route of the experiment copies ``percent`` of its requests to
  ``<mirror>.mirror``, a route to the mirror model's versions whose responses Envoy discards.

When a candidate is not ready there is no split: the experiment endpoint is not routed and the
default model serves alone (Seldon's fallback); a mirror that is not ready is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apis.routing import WEIGHT_SCALE, MirrorPolicy, Route, Split, millionths
from experiments.model import Experiment

MIRROR_SUFFIX = ".mirror"


@dataclass(frozen=True, slots=True)
class Member:
    """What the plan needs of one member model."""

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


def mirror_route_name(model: str) -> str:
    return model + MIRROR_SUFFIX


def plan(experiment: Experiment, members: Mapping[str, Member]) -> TrafficPlan:
    problems: list[str] = []
    for candidate in experiment.candidates:
        member = members.get(candidate.name)
        if member is None or not member.ready or member.route is None or not member.route.splits:
            problems.append(f"candidate {candidate.name} is not available{_because(member)}")
    candidates_ready = not problems
    mirror_route: Route | None = None
    mirror = experiment.mirror
    if mirror is not None:
        member = members.get(mirror.name)
        if member is not None and member.ready and member.route is not None and member.route.splits:
            mirror_route = Route(mirror_route_name(mirror.name), member.route.splits)
        else:
            problems.append(f"mirror {mirror.name} is not available{_because(member)}")
    if not candidates_ready:
        return TrafficPlan((), False, mirror is None or mirror_route is not None, tuple(problems))
    splits = _splits(experiment, members)
    policy = (
        MirrorPolicy(mirror_route.name, mirror.percent * WEIGHT_SCALE // 100)
        if mirror is not None and mirror_route is not None
        else None
    )
    routes = [Route(experiment.route_name, splits, policy)]
    if experiment.default is not None:
        routes.append(Route(experiment.default, splits, policy))
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
    return tuple(
        Split(split.target, weight, split.endpoints)
        for (split, _), weight in zip(parts, weights, strict=True)
        if weight > 0
    )


def _because(member: Member | None) -> str:
    if member is None:
        return " (no such model)"
    return f" ({member.reason})" if member.reason else ""
