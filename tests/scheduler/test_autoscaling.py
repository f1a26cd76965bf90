"""The autoscaler's decisions against simulated Envoy load reports on a fake clock (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from apis.limits import MAX_REPLICAS
from apis.load import LoadReport, ReplicaLoad
from apis.mlops.scheduler.scheduler_pb2 import DeploymentSpec
from apis.routing import Endpoint
from scheduler.autoscaling import Autoscaler, Decision, Direction, ModelScale, Thresholds, carried_scale

THRESHOLDS = Thresholds(in_flight_per_replica=30, scale_up_window_s=20, idle_window_s=600, cooldown_s=60)
INTERVAL_S = 5.0


@dataclass
class FakeClock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


def endpoint(idx: int) -> Endpoint:
    return Endpoint(f"10.0.0.{idx + 1}", 9000, 9500)


def report(
    in_flight: dict[int, int], *, source: str = "envoy-a", target: str = "iris_1", completed: int = 0
) -> LoadReport:
    """One Envoy's report: requests in flight per replica index of one model version."""
    loads = tuple(ReplicaLoad(target, endpoint(idx), n, completed) for idx, n in in_flight.items())
    return LoadReport(source, INTERVAL_S, loads)


def iris(replicas: int = 1, *, serving: int | None = None, low: int = 1, high: int = 3) -> ModelScale:
    # Changed long before the tests' clock starts: no cooldown is pending.
    serving = replicas if serving is None else serving
    return ModelScale("iris", replicas, serving, low, high, available=True, changed_at=0.0)


class Run:
    """An autoscaler on a fake clock, fed one report per interval."""

    def __init__(self, thresholds: Thresholds = THRESHOLDS) -> None:
        self.clock = FakeClock()
        self.autoscaler = Autoscaler(thresholds, self.clock)

    def feed(self, seconds: float, load: dict[int, int], model: ModelScale, **kw: object) -> list[Decision]:
        """Report ``load`` every interval for ``seconds``; every decision taken on the way."""
        decisions: list[Decision] = []
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + INTERVAL_S)
            self.autoscaler.observe(report(load, **kw))  # type: ignore[arg-type]
            decisions += self.autoscaler.decide([model])
        return decisions

    def wait(self, seconds: float, model: ModelScale) -> list[Decision]:
        """No report at all for ``seconds`` (an idle Envoy may send none); decide each second."""
        decisions: list[Decision] = []
        for _ in range(int(seconds)):
            self.clock.now += 1
            decisions += self.autoscaler.decide([model])
        return decisions


def test_lag_held_for_the_window_adds_one_replica() -> None:
    run = Run()
    decisions = run.feed(30, {0: 30}, iris(1))
    assert [(d.replicas, d.direction) for d in decisions] == [(2, Direction.up)]
    assert "30+ requests in flight per replica for 20.0s" in decisions[0].reason


def test_lag_below_the_threshold_adds_nothing() -> None:
    assert Run().feed(120, {0: 29}, iris(1)) == []


def test_brief_spikes_add_nothing() -> None:
    run = Run()
    model = iris(1)
    for _ in range(10):  # 15 s above, then one report below, over and over
        assert run.feed(15, {0: 100}, model) == []
        assert run.feed(5, {0: 0}, model) == []


def test_the_threshold_is_per_serving_replica() -> None:
    run = Run()
    assert run.feed(60, {0: 25, 1: 25}, iris(2)) == [], "50 over 2 replicas is 25 each"
    assert [d.replicas for d in run.feed(30, {0: 30, 1: 31}, iris(2))] == [3]


def test_in_flight_is_summed_over_every_envoy() -> None:
    run = Run()
    decisions: list[Decision] = []
    for _ in range(6):
        run.clock.now += INTERVAL_S
        run.autoscaler.observe(report({0: 15}, source="envoy-a"))
        run.autoscaler.observe(report({0: 15}, source="envoy-b"))
        decisions += run.autoscaler.decide([iris(1)])
    assert [d.replicas for d in decisions] == [2]


def test_an_envoy_that_stopped_reporting_no_longer_counts() -> None:
    run = Run()
    run.autoscaler.observe(report({0: 20}, source="gone"))
    # Three of its intervals later its 20 are forgotten: 15 alone is below 30.
    decisions = run.feed(60, {0: 15}, iris(1), source="envoy-a")
    assert decisions == []


def test_every_version_of_a_model_counts_toward_its_lag() -> None:
    run = Run()
    decisions: list[Decision] = []
    for _ in range(6):
        run.clock.now += INTERVAL_S
        loads = (ReplicaLoad("iris_1", endpoint(0), 20, 0), ReplicaLoad("iris_2", endpoint(0), 10, 0))
        run.autoscaler.observe(LoadReport("envoy-a", INTERVAL_S, loads))
        decisions += run.autoscaler.decide([iris(1)])
    assert [d.replicas for d in decisions] == [2]


def test_no_scale_up_beyond_max_replicas() -> None:
    assert Run().feed(120, {0: 100, 1: 100, 2: 100}, iris(3)) == []


def test_no_scale_up_before_the_last_step_is_serving() -> None:
    assert Run().feed(120, {0: 100}, iris(2, serving=1)) == []


def test_no_scale_up_once_the_reports_stop() -> None:
    run = Run()
    run.feed(15, {0: 100}, iris(1))
    assert run.wait(60, iris(1)) == [], "a window held in the past proves nothing now"


def test_idle_for_the_window_removes_one_replica_at_a_time_down_to_min() -> None:
    run = Run()
    model = iris(3, low=1)
    assert run.feed(595, {0: 0, 1: 0, 2: 0}, model) == []
    decisions = run.feed(10, {0: 0, 1: 0, 2: 0}, model)
    assert [(d.replicas, d.direction) for d in decisions] == [(2, Direction.down)]
    assert "no requests for 600" in decisions[0].reason
    # The next step needs a new idle window from that decision.
    model = iris(2, low=1)
    assert run.feed(590, {0: 0, 1: 0}, model) == []  # 595 s after it
    assert [d.replicas for d in run.feed(10, {0: 0, 1: 0}, model)] == [1]
    assert run.feed(1200, {0: 0}, iris(1, low=1)) == [], "never below minReplicas"


def test_idle_stops_at_min_replicas_above_one() -> None:
    assert Run().feed(2000, {0: 0, 1: 0}, iris(2, low=2)) == []


def test_never_the_last_replica_even_without_min_replicas() -> None:
    assert Run().feed(2000, {0: 0}, iris(1, low=0, high=3)) == []


def test_completed_requests_are_traffic() -> None:
    """Requests finish between two reports (nothing in flight at either): the model is not idle."""
    run = Run()
    assert run.feed(2000, {0: 0, 1: 0}, iris(2), completed=7) == []


def test_no_scale_down_without_any_report() -> None:
    assert Run().wait(2000, iris(3)) == [], "no Envoy reporting: idleness is unknown"


def test_idleness_counts_from_the_autoscaler_start_not_before() -> None:
    run = Run()
    run.clock.now += 300
    run.autoscaler = Autoscaler(THRESHOLDS, run.clock)  # a restarted scheduler
    assert run.feed(595, {0: 0, 1: 0}, iris(2)) == []


def test_cooldown_after_each_change_prevents_flapping() -> None:
    run = Run(replace(THRESHOLDS, idle_window_s=20, cooldown_s=60))
    model = iris(1)
    assert [d.replicas for d in run.feed(30, {0: 100}, model)] == [2]  # at +25 s
    # Served by 2 now, still busy and then idle (for more than the idle window): nothing until
    # 60 s after the decision.
    grown = iris(2)
    assert run.feed(20, {0: 100, 1: 100}, grown) == []
    assert run.feed(30, {0: 0, 1: 0}, grown) == []
    assert [(d.replicas, d.direction) for d in run.feed(10, {0: 0, 1: 0}, grown)] == [(1, Direction.down)]


def test_cooldown_counts_from_the_models_last_state_change() -> None:
    run = Run()
    changed = replace(iris(1), changed_at=run.clock.now + 30)  # it became Available again at +30
    assert run.feed(85, {0: 100}, changed) == []
    assert [d.replicas for d in run.feed(10, {0: 100}, changed)] == [2]


def test_lag_before_the_models_last_change_is_not_counted() -> None:
    run = Run(replace(THRESHOLDS, cooldown_s=1))
    changed = replace(iris(1), changed_at=run.clock.now + 15)
    assert run.feed(30, {0: 100}, changed) == []
    assert [d.replicas for d in run.feed(10, {0: 100}, changed)] == [2]


def test_a_model_that_is_not_available_is_left_alone() -> None:
    model = replace(iris(1), available=False)
    assert Run().feed(120, {0: 100}, model) == []


def test_scenario_45_replicas_only_is_never_autoscaled() -> None:
    run = Run()
    fixed = iris(2, low=0, high=0)
    assert run.feed(120, {0: 100, 1: 100}, fixed) == []
    assert run.feed(2000, {0: 0, 1: 0}, fixed) == []


def test_only_min_replicas_scales_up_without_a_ceiling() -> None:
    model = iris(1, low=1, high=0)
    assert model.ceiling == MAX_REPLICAS
    assert [d.replicas for d in Run().feed(30, {0: 100}, model)] == [2]


def test_unloaded_models_are_forgotten() -> None:
    run = Run()
    run.feed(15, {0: 100}, iris(1))
    run.autoscaler.forget({})
    assert run.feed(10, {0: 100}, iris(1)) == [], "the held run starts again"


# -- the scaled count across re-applies ---------------------------------------------------------------


def spec(replicas: int, low: int = 0, high: int = 0) -> DeploymentSpec:
    return DeploymentSpec(replicas=replicas, minReplicas=low, maxReplicas=high)


@pytest.mark.parametrize(
    ("scaled", "old", "new", "kept"),
    [
        (3, spec(1, 1, 3), spec(1, 1, 3), 3),  # the same spec again: kept
        (None, spec(1, 1, 3), spec(1, 1, 3), None),  # never scaled: follows the spec
        (3, spec(1, 1, 3), spec(2, 1, 3), None),  # a new replicas: the user's count wins
        (3, spec(1, 1, 3), spec(1, 1, 2), 2),  # a lower maxReplicas clamps it
        (2, spec(1, 1, 3), spec(1, 3, 4), 3),  # a higher minReplicas lifts it
        (3, spec(1, 1, 3), spec(1), None),  # no bounds: no longer autoscaled (scenario 45)
        (3, spec(1, 1, 3), spec(1, 1, 0), 3),  # min alone still autoscales
    ],
)
def test_carried_scale(
    scaled: int | None, old: DeploymentSpec, new: DeploymentSpec, kept: int | None
) -> None:
    assert carried_scale(scaled, old, new) == kept
