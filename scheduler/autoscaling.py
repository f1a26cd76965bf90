"""Model autoscaling decisions from Envoy's load reports: pure, no I/O, the clock injected.

What it decides (docs/decisions/0016):

- **up**: a model's requests in flight *per serving replica* stayed at or above the threshold in
  every observation over the scale-up window (two observations at least ``window`` apart, none
  below in between): one replica more, up to ``maxReplicas``. A spike shorter than the window, or
  one observation below, starts the window again.
- **down**: no request in flight and none completed for the idle window: one replica less, down to
  ``minReplicas`` and never below 1 (so never the last replica of a model with traffic).
- **eligible**: only models whose spec sets ``minReplicas`` or ``maxReplicas`` (a model with only
  ``replicas`` keeps exactly that, as in Seldon), that are Available with every desired replica
  serving, and whose state has not changed for the cooldown (after each change the model goes
  through Progressing back to Available, so the cooldown also follows every scaling step).

In flight per replica is summed over every Envoy (each sees only its own share) and over every
version of the model; an Envoy that stopped reporting is forgotten after three of its intervals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from apis import names
from apis.limits import MAX_REPLICAS
from apis.load import LoadReport
from apis.mlops.scheduler.scheduler_pb2 import DeploymentSpec

# Observations kept per model: enough for any window at any report interval the bounds allow, and
# the oldest are dropped first (a bound, not a correctness limit: a held window only needs its ends).
MAX_OBSERVATIONS = 1_000
# An Envoy silent for this many of its own report intervals is forgotten (it went away).
STALE_INTERVALS = 3.0
MIN_STALE_S = 1.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The knobs (``scheduler/config.py`` flags; defaults and reasons in decision 0016)."""

    in_flight_per_replica: int = 30
    scale_up_window_s: float = 20.0
    idle_window_s: float = 600.0
    cooldown_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ModelScale:
    """What the scheduler tells the autoscaler about one model, each time it decides."""

    name: str
    replicas: int  # the desired count now (scaled, else the spec's)
    serving: int  # replicas Envoy may route to now
    min_replicas: int  # the spec's; 0 = not set
    max_replicas: int  # the spec's; 0 = not set
    available: bool  # ModelAvailable
    changed_at: float  # when its state last changed, on the autoscaler's clock

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas > 0 or self.max_replicas > 0

    @property
    def floor(self) -> int:
        return max(1, self.min_replicas)

    @property
    def ceiling(self) -> int:
        return self.max_replicas or MAX_REPLICAS


class Direction(StrEnum):
    up = "up"
    down = "down"


@dataclass(frozen=True, slots=True)
class Decision:
    model: str
    replicas: int  # the new desired count
    direction: Direction
    reason: str


@dataclass(slots=True)
class _Observation:
    at: float
    in_flight: int  # summed over every Envoy and replica of the model


@dataclass(slots=True)
class _Source:
    """One Envoy's newest report, reduced to what is needed: totals per model."""

    at: float
    stale_after_s: float
    in_flight: dict[str, int] = field(default_factory=dict)


class Autoscaler:
    """Turns load reports into scaling decisions (see the module docstring for the rules).

    :meth:`observe` takes every report; :meth:`decide` is asked after each report and on a timer
    (idleness shows as the *absence* of traffic) with the scheduler's view of each model.
    """

    def __init__(self, thresholds: Thresholds, clock: Callable[[], float]) -> None:
        self._thresholds = thresholds
        self._clock = clock
        self._sources: dict[str, _Source] = {}
        self._observations: dict[str, deque[_Observation]] = {}
        self._last_active: dict[str, float] = {}
        self._last_decision: dict[str, float] = {}
        # Nothing is known of the time before this process started: idleness is counted from here.
        self._started = clock()

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    def observe(self, report: LoadReport) -> None:
        now = self._clock()
        in_flight: dict[str, int] = {}
        for load in report.loads:
            model = names.model_of(load.target)
            in_flight[model] = in_flight.get(model, 0) + max(0, load.in_flight)
            if load.in_flight > 0 or load.completed > 0:
                self._last_active[model] = now
        stale_after = max(MIN_STALE_S, STALE_INTERVALS * report.interval_s)
        previous = self._sources.get(report.source)
        self._sources[report.source] = _Source(now, stale_after, in_flight)
        touched = set(in_flight) | (set(previous.in_flight) if previous else set())
        self._forget_stale(now)
        for model in touched:
            total = sum(s.in_flight.get(model, 0) for s in self._sources.values())
            series = self._observations.setdefault(model, deque(maxlen=MAX_OBSERVATIONS))
            series.append(_Observation(now, total))

    def decide(self, models: Iterable[ModelScale]) -> list[Decision]:
        now = self._clock()
        self._forget_stale(now)
        decisions = []
        for model in models:
            decision = self._decide_one(model, now) if model.autoscaled else None
            if decision is not None:
                decisions.append(decision)
        return decisions

    def forget(self, keep: Mapping[str, object]) -> None:
        """Drop what is kept about models no longer in ``keep`` (unloaded)."""
        for table in (self._observations, self._last_active, self._last_decision):
            for model in [m for m in table if m not in keep]:
                del table[model]

    def _decide_one(self, model: ModelScale, now: float) -> Decision | None:
        # A scaling step shows in the model's state only when minReplicas is not set, so the
        # cooldown counts from the later of the state change and this autoscaler's own decision.
        since = max(model.changed_at, self._last_decision.get(model.name, model.changed_at))
        settled = model.available and model.serving >= model.replicas
        if not settled or now - since < self._thresholds.cooldown_s:
            return None
        decision = self._scale_up(model, since) or self._scale_down(model, since, now)
        if decision is not None:
            self._last_decision[model.name] = now
        return decision

    def _scale_up(self, model: ModelScale, since: float) -> Decision | None:
        held = self._held_busy_s(model, since)
        if held is None or model.replicas >= model.ceiling:
            return None
        per_replica = self._thresholds.in_flight_per_replica
        reason = f"{per_replica}+ requests in flight per replica for {held:.1f}s"
        return Decision(model.name, model.replicas + 1, Direction.up, reason)

    def _scale_down(self, model: ModelScale, since: float, now: float) -> Decision | None:
        if not self._sources or model.replicas <= model.floor:
            return None  # without any Envoy reporting, idleness is unknown, not proven
        idle_since = max(self._last_active.get(model.name, since), since, self._started)
        if now - idle_since < self._thresholds.idle_window_s:
            return None
        return Decision(
            model.name, model.replicas - 1, Direction.down, f"no requests for {now - idle_since:.1f}s"
        )

    def _held_busy_s(self, model: ModelScale, since: float) -> float | None:
        """How long the newest run of busy observations (after ``since``) lasted, once it spans
        the scale-up window; None otherwise."""
        series = self._observations.get(model.name)
        busy_total = self._thresholds.in_flight_per_replica * max(1, model.serving)
        if not series or self._clock() - series[-1].at > self._stale_bound():
            return None  # no fresh observation: nothing is known to be held now
        start = None
        for observation in reversed(series):
            if observation.in_flight < busy_total or observation.at < since:
                break
            start = observation.at
        if start is None:
            return None
        held = series[-1].at - start
        return held if held >= self._thresholds.scale_up_window_s else None

    def _stale_bound(self) -> float:
        return max((s.stale_after_s for s in self._sources.values()), default=MIN_STALE_S)

    def _forget_stale(self, now: float) -> None:
        for name in [n for n, s in self._sources.items() if now - s.at > s.stale_after_s]:
            del self._sources[name]


def autoscales(deployment: DeploymentSpec) -> bool:
    """Whether a model with this spec is autoscaled: it sets minReplicas or maxReplicas (one that
    sets only ``replicas`` keeps exactly that many, scenario 45)."""
    return deployment.minReplicas > 0 or deployment.maxReplicas > 0


def carried_scale(scaled: int | None, old: DeploymentSpec, new: DeploymentSpec) -> int | None:
    """The scaled count a model keeps when its spec is applied again (None: follow the spec).

    The same spec applied again keeps it. A new ``replicas`` is the user asking for a count, which
    wins (as in Seldon, the user resets the scaled count by changing ``replicas``); new bounds only
    clamp it; a spec without bounds is no longer autoscaled.
    """
    if scaled is None or not autoscales(new) or new.replicas != old.replicas:
        return None
    return min(max(scaled, new.minReplicas, 1), new.maxReplicas or MAX_REPLICAS)
