"""Server autoscaling decisions: when to ask the controller for more or fewer replicas of a server.

Seldon's "native server autoscaling" (reference §4.2): the scheduler never starts processes; it
sends ``ServerStatusResponse{type: ScalingRequest, expectedReplicas}`` on ``SubscribeServerStatus``
and the controller (the Kubernetes operator, here ``stack/controller.py``) carries it out by
declaring the new count (``ServerNotify``). Only a declared server (a Server resource) with
``minReplicas`` or ``maxReplicas`` set is scaled.

- **Up**: a model wants more replicas (``deploymentSpec.replicas``) than its server has; the
  request is ``min(wanted, maxReplicas)``, never above ``maxReplicas`` (no request at all without
  one). An unplaced model counts for the first autoscaled server (by name) whose capabilities and
  sharing accept it.
- **Down**: a replica that has held no model for ``grace_s`` is released: the request is
  ``max(minReplicas, 1, wanted, expected - ripe empty replicas)``. The highest indexes retire
  (as a StatefulSet scales in): their models, if any, move first (make before break).
- **Packing** (off by default, experimental as in Seldon): when no replica is empty but the
  largest model on the server wants fewer replicas than the server has, for ``grace_s``, one
  replica is released and its models move onto the others.

Pure: :class:`ServerScaler` reads models and servers and returns requests; the clock is a
parameter, so the grace period is tested without waiting. A request still applicable is sent
again every ``resend_s`` (a controller that was away gets it), otherwise once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scheduler.placement import requirements, sharing
from scheduler.state import ModelRecord, ModelVersion, Server

DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_RESEND_SECONDS = 10.0


@dataclass(frozen=True)
class ScalingSettings:
    enabled: bool = True
    grace_s: float = DEFAULT_GRACE_SECONDS
    packing: bool = False
    resend_s: float = DEFAULT_RESEND_SECONDS


@dataclass(frozen=True)
class ScalingRequest:
    server: str
    replicas: int
    reason: str


@dataclass(frozen=True)
class Want:
    """The most replicas any model asks of a server, and which model asks it."""

    replicas: int
    model: str


def autoscaled(server: Server) -> bool:
    """Declared by a Server resource (not being deleted) with scaling bounds set."""
    return server.expected_replicas > 0 and (server.min_replicas > 0 or server.max_replicas > 0)


def accepts(version: ModelVersion, server: Server) -> bool:
    """Whether ``server`` could run ``version`` given enough replicas (capabilities, sharing)."""
    return sharing(version, server) is None and requirements(version, server) is None


def wanted(servers: Iterable[Server], models: Iterable[ModelRecord]) -> dict[str, Want]:
    """Per server: the largest replica count a model placed (or placeable) there asks for."""
    scalable = sorted((s for s in servers if autoscaled(s)), key=lambda s: s.name)
    wants: dict[str, Want] = {}

    def add(server: str, version: ModelVersion) -> None:
        replicas = max(version.desired_replicas, 1)
        if server not in wants or replicas > wants[server].replicas:
            wants[server] = Want(replicas, version.name)

    for record in models:
        if record.deleted:
            continue
        latest = record.latest
        if latest.server:
            add(latest.server, latest)
        elif latest.schedule_error:
            target = next((s for s in scalable if accepts(latest, s)), None)
            if target is not None:
                add(target.name, latest)
    return wants


def occupancy(server: str, models: Iterable[ModelRecord]) -> dict[int, int]:
    """Per replica of ``server``: model versions on it in any active state (loading to unloading)."""
    counts: dict[int, int] = {}
    for record in models:
        for version in record.versions:
            if version.server == server:
                for idx in version.active_replicas():
                    counts[idx] = counts.get(idx, 0) + 1
    return counts


class ServerScaler:
    """Turns the state of models and servers into ScalingRequests, remembering since when each
    replica has been empty (or each server sparse) and what it last asked for."""

    def __init__(self, settings: ScalingSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._empty_since: dict[tuple[str, int], float] = {}
        self._sparse_since: dict[str, float] = {}
        self._sent: dict[str, tuple[int, int, float]] = {}  # server -> (asked, expected then, when)

    def decide(
        self,
        servers: Iterable[Server],
        models: Iterable[ModelRecord],
        occupied: Callable[[str], dict[int, int]] | None = None,
    ) -> list[ScalingRequest]:
        """``occupied(server)``: model versions per replica (:func:`occupancy` when not given; the
        scheduler passes its index, so a decision does not walk every model once per server)."""
        if not self.settings.enabled:
            return []
        now = self._clock()
        server_list = list(servers)
        if not any(autoscaled(s) for s in server_list):
            # Called every second: with no autoscaled server (the default) never walk the models.
            self._sent.clear()
            self._sparse_since.clear()
            self._empty_since.clear()
            return []
        model_list = list(models)
        count = occupied or (lambda name: occupancy(name, model_list))
        wants = wanted(server_list, model_list)
        requests = []
        for server in server_list:
            if not autoscaled(server):
                self._forget(server.name)
                continue
            want = wants.get(server.name)
            request = self._up(server, want) or self._down(server, want, count, now)
            if request is not None and self._worth_sending(request, server.expected_replicas, now):
                requests.append(request)
        known = {s.name for s in server_list}
        for name in [n for n in self._sent if n not in known]:
            self._forget(name)
        return requests

    def _up(self, server: Server, want: Want | None) -> ScalingRequest | None:
        expected, ceiling = server.expected_replicas, server.max_replicas
        if want is None or ceiling <= 0 or want.replicas <= expected:
            return None
        target = min(want.replicas, ceiling)
        if target <= expected:
            return None  # already at maxReplicas: never ask beyond it
        reason = f"model {want.model} wants {want.replicas} replicas, server has {expected}"
        if target < want.replicas:
            reason += f" (capped at maxReplicas {ceiling})"
        return ScalingRequest(server.name, target, reason)

    def _down(
        self, server: Server, want: Want | None, occupied: Callable[[str], dict[int, int]], now: float
    ) -> ScalingRequest | None:
        expected, grace = server.expected_replicas, self.settings.grace_s
        floor = max(server.min_replicas, 1, want.replicas if want else 0)
        if expected <= floor:
            self._forget(server.name)
            return None
        used = occupied(server.name)
        empty = {
            r.idx
            for r in server.replicas.values()
            if r.idx < expected and r.connected and not r.retiring and not used.get(r.idx)
        }
        for key in [k for k in self._empty_since if k[0] == server.name and k[1] not in empty]:
            del self._empty_since[key]
        for idx in empty:
            self._empty_since.setdefault((server.name, idx), now)
        ripe = sorted(i for i in empty if now - self._empty_since[(server.name, i)] >= grace)
        if ripe:
            self._sparse_since.pop(server.name, None)
            target = max(floor, expected - len(ripe))
            return ScalingRequest(server.name, target, f"replicas {ripe} held no model for {grace:g}s")
        if empty or not self.settings.packing:
            self._sparse_since.pop(server.name, None)
            return None
        since = self._sparse_since.setdefault(server.name, now)
        if now - since < grace:
            return None
        largest = want.replicas if want else 0
        return ScalingRequest(
            server.name,
            expected - 1,
            f"packing: the largest model wants {largest} of {expected} replicas for {grace:g}s",
        )

    def _worth_sending(self, request: ScalingRequest, expected: int, now: float) -> bool:
        sent = self._sent.get(request.server)
        fresh = sent is not None and now - sent[2] < self.settings.resend_s
        if fresh and sent is not None and sent[:2] == (request.replicas, expected):
            return False
        self._sent[request.server] = (request.replicas, expected, now)
        return True

    def _forget(self, server: str) -> None:
        self._sent.pop(server, None)
        self._sparse_since.pop(server, None)
        for key in [k for k in self._empty_since if k[0] == server]:
            del self._empty_since[key]
