"""Applying autoscaling decisions: the scaled count beside the spec, placed, persisted and kept
across re-applies and restarts; the autoscaler wired to the scheduler on a fake clock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from apis.load import LoadReport, ReplicaLoad
from apis.mlops.scheduler import scheduler_pb2
from apis.routing import Endpoint
from apis.validation import InvalidResource
from scheduler.app import SchedulerApp
from scheduler.autoscaling import Thresholds
from scheduler.config import SchedulerConfig, parse_args
from scheduler.core import ModelNotFound
from scheduler.model_autoscaling import ModelAutoscaling, autoscaled_targets
from scheduler.state import ModelRecord, ModelState, ModelVersion, ReplicaState
from scheduler.status import model_status
from scheduler.store import StateStore
from tests.scheduler.fakes import Event, Harness, pending_ops, wait_until
from tests.scheduler.fakes import model as plain_model
from tests.scheduler.test_autoscaling import FakeClock
from tests.scheduler.test_store import _v1_database, sample_models

LOAD, UNLOAD = "LOAD_MODEL", "UNLOAD_MODEL"


def scaled_model(
    name: str = "iris", *, replicas: int = 1, low: int = 1, high: int = 3, uri: str = "gs://models/iris"
) -> scheduler_pb2.Model:
    built = plain_model(name, replicas=replicas, min_replicas=low, uri=uri)
    built.deploymentSpec.maxReplicas = high
    return built


async def three_replicas_with_iris(harness: Harness, spec: scheduler_pb2.Model | None = None) -> None:
    for idx in range(3):
        await harness.connect(idx=idx)
    await harness.load(spec or scaled_model())
    await harness.make_available("iris", idx=0)
    for link in harness.links.values():
        pending_ops(link)


def ops(harness: Harness) -> dict[int, list[tuple[str, str, int]]]:
    return {idx: pending_ops(link) for (_, idx), link in harness.links.items()}


async def test_scaling_loads_another_replica_and_leaves_the_spec_alone(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 2)
    await harness.settle()
    assert ops(harness) == {0: [], 1: [(LOAD, "iris", 1)], 2: []}
    await harness.make_available("iris", idx=1)
    version = harness.version("iris")
    assert version.spec.deploymentSpec.replicas == 1
    status = model_status(harness.scheduler.models["iris"], all_versions=False).versions[0]
    assert status.state.availableReplicas == 2
    assert status.modelDefn.deploymentSpec.replicas == 1, "the user's spec is shown unchanged"
    assert status.state.state == scheduler_pb2.ModelStatus.ModelAvailable


async def test_scaling_down_unloads_a_replica_after_envoy_drops_it(harness: Harness) -> None:
    await three_replicas_with_iris(harness, scaled_model(replicas=2))
    await harness.make_available("iris", idx=1)
    ops(harness)
    harness.scheduler.scale_model("iris", 1)
    await harness.settle()
    await harness.envoy_applies()
    assert sum(len(o) for o in ops(harness).values()) == 1
    assert len(harness.version("iris").replicas_in(ReplicaState.Unloading)) == 1


async def test_scaling_rejects_bad_counts_and_unknown_models(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    for bad in (0, 1001):
        with pytest.raises(InvalidResource):
            harness.scheduler.scale_model("iris", bad)
    with pytest.raises(ModelNotFound):
        harness.scheduler.scale_model("nope", 2)
    await harness.unload("iris")
    with pytest.raises(ModelNotFound):
        harness.scheduler.scale_model("iris", 2)


async def test_reapplying_the_same_spec_keeps_the_scaled_count(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 3)
    await harness.settle()
    ops(harness)
    await harness.load(scaled_model())
    assert harness.version("iris").desired_replicas == 3
    assert ops(harness) == {0: [], 1: [], 2: []}, "nothing unloaded"


async def test_a_new_replicas_in_the_spec_resets_the_scaled_count(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 3)
    await harness.load(scaled_model(replicas=2))
    version = harness.version("iris")
    assert (version.scaled_replicas, version.desired_replicas) == (None, 2)


async def test_a_lower_max_replicas_clamps_the_scaled_count(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 3)
    await harness.load(scaled_model(high=2))
    assert harness.version("iris").desired_replicas == 2


async def test_a_new_model_spec_rolls_out_with_the_scaled_count(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 2)
    await harness.make_available("iris", idx=1)
    ops(harness)
    await harness.load(scaled_model(uri="gs://models/iris-v2"))
    assert harness.version("iris").number == 2
    assert harness.version("iris").desired_replicas == 2
    loads = [(idx, op) for idx, sent in ops(harness).items() for op in sent]
    assert loads == [(0, (LOAD, "iris", 2)), (1, (LOAD, "iris", 2))]


async def test_a_reloaded_model_starts_from_its_spec(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    harness.scheduler.scale_model("iris", 2)
    await harness.unload("iris")
    await harness.load(scaled_model())
    assert harness.version("iris").scaled_replicas is None


async def test_the_scaled_count_survives_a_restart(tmp_path: Path) -> None:
    first = Harness(store_path=tmp_path / "state.db")
    await three_replicas_with_iris(first)
    first.scheduler.scale_model("iris", 2)
    first.scheduler.commit()
    await first.scheduler.close()

    second = Harness(store_path=tmp_path / "state.db")
    second.scheduler.restore()
    assert second.version("iris").scaled_replicas == 2
    assert second.version("iris").spec.deploymentSpec.replicas == 1
    await second.load(scaled_model())  # the controller re-applies its spec after the restart
    assert second.version("iris").desired_replicas == 2
    await second.scheduler.close()


def test_a_database_from_before_autoscaling_restores(tmp_path: Path) -> None:
    store = StateStore(_v1_database(tmp_path))
    models, _ = store.load()
    store.close()
    assert models == sample_models()
    assert all(v.scaled_replicas is None for record in models.values() for v in record.versions)


# -- the autoscaler wired to the scheduler -------------------------------------------------------------

FAST = Thresholds(in_flight_per_replica=5, scale_up_window_s=2, idle_window_s=4, cooldown_s=1)


def load_of(harness: Harness, in_flight: dict[int, int], interval_s: float = 1.0) -> LoadReport:
    server = harness.scheduler.servers["mlserver"]
    loads = tuple(ReplicaLoad("iris_1", server.replicas[i].endpoint, n, 0) for i, n in in_flight.items())
    return LoadReport("envoy-a", interval_s, loads)


async def test_sustained_lag_scales_up_and_idleness_back_down(harness: Harness) -> None:
    await three_replicas_with_iris(harness)
    clock = FakeClock(time.time() + 10)  # past the model's last change by more than the cooldown
    scaling = ModelAutoscaling(harness.scheduler, FAST, clock)
    for _ in range(3):
        scaling.on_load(load_of(harness, {0: 10}))
        clock.now += 1
    assert harness.version("iris").desired_replicas == 2
    assert harness.version("iris").spec.deploymentSpec.replicas == 1
    await harness.settle()
    assert ops(harness)[1] == [(LOAD, "iris", 1)]
    await harness.make_available("iris", idx=1)
    assert harness.state("iris") is ModelState.ModelAvailable
    clock.now = max(clock.now, harness.version("iris").timestamp) + 2
    for _ in range(6):
        scaling.on_load(load_of(harness, {0: 0, 1: 0}))
        clock.now += 1
    assert harness.version("iris").desired_replicas == 1
    await harness.envoy_applies()
    assert [op for sent in ops(harness).values() for op in sent] == [(UNLOAD, "iris", 1)]


async def test_the_timer_notices_idleness_without_reports(harness: Harness) -> None:
    await three_replicas_with_iris(harness, scaled_model(replicas=2))
    await harness.make_available("iris", idx=1)
    clock = FakeClock(time.time() + 10)
    scaling = ModelAutoscaling(harness.scheduler, FAST, clock)
    assert scaling.tick_s == 0.25
    # An Envoy reporting every 60 s: idle for the window with no report since this one.
    scaling.on_load(load_of(harness, {0: 0, 1: 0}, interval_s=60))
    clock.now += 100
    timer = asyncio.create_task(scaling.run())
    try:
        await wait_until(lambda: harness.version("iris").desired_replicas == 1, timeout=5)
    finally:
        timer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await timer


async def test_a_model_with_only_replicas_is_never_scaled(harness: Harness) -> None:
    """Scenario 45."""
    await three_replicas_with_iris(harness, plain_model("iris", replicas=2))
    await harness.report(Event.LOADED, "iris", 1, idx=1)
    await harness.envoy_applies()
    clock = FakeClock(time.time() + 10)
    scaling = ModelAutoscaling(harness.scheduler, FAST, clock)
    for _ in range(20):
        scaling.on_load(load_of(harness, {0: 100, 1: 100}))
        clock.now += 1
    for _ in range(20):
        scaling.on_load(load_of(harness, {0: 0, 1: 0}))
        clock.now += 1
    assert harness.version("iris").desired_replicas == 2


async def test_autoscaling_is_off_by_default() -> None:
    """Scenario 43: nothing listens to load reports unless --enable-model-autoscaling is given."""
    assert SchedulerConfig().enable_model_autoscaling is False
    off = SchedulerApp(parse_args([], env={}))
    assert off.autoscaling is None
    await off.core.close()
    on = SchedulerApp(parse_args(["--enable-model-autoscaling", "--model-idle-seconds=30"], env={}))
    assert on.autoscaling is not None
    assert on.config.autoscaling_thresholds == Thresholds(idle_window_s=30)
    await on.core.close()


@pytest.mark.parametrize(
    "flag",
    [
        "--model-lag-threshold=0",
        "--model-lag-threshold=100001",
        "--model-idle-seconds=0",
        "--model-scale-up-seconds=1e9",
    ],
)
def test_out_of_bounds_autoscaling_flags_are_refused(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([flag], env={})
    assert exited.value.code == 2
    assert flag.split("=")[0] in capsys.readouterr().err


async def test_envoy_reports_only_the_models_that_autoscale_and_follows_loads_and_unloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decision 0015: the LRS answer lists the clusters of autoscaled model versions, none when off."""
    monkeypatch.setattr("xdsserver.report_scope.SETTLE_S", 0.0)
    on = SchedulerApp(parse_args(["--enable-model-autoscaling"], env={}))
    off = SchedulerApp(parse_args([], env={}))
    try:
        assert on.load_scope.clusters() == () and off.load_scope.clusters() == ()
        on.core.load_model(scaled_model())
        on.core.load_model(plain_model("fixed", replicas=2))
        off.core.load_model(scaled_model())
        on.load.on_load(
            LoadReport("envoy", 1.0, (ReplicaLoad("gone_1", Endpoint("10.0.0.1", 9000, 9500), 0, 2),))
        )
        assert on.load_scope.clusters() == ("iris_1_http", "iris_1_grpc")
        assert set(on.load.completed()) == set(), "versions no longer reported are forgotten"
        late = LoadReport("envoy", 1.0, (ReplicaLoad("gone_1", Endpoint("10.0.0.1", 9000, 9500), 5, 1),))
        on.load.on_load(late)  # sent before that Envoy heard of the new list
        assert on.load.in_flight() == {} and on.load.in_flight_by_replica() == {}
        assert off.load_scope.clusters() == (), "autoscaling off: no cluster reported"
        on.core.load_model(scaled_model(uri="gs://models/iris-v2"))
        assert on.load_scope.clusters() == ("iris_1_http", "iris_1_grpc", "iris_2_http", "iris_2_grpc")
        on.core.unload_model("iris")
        assert on.load_scope.clusters() == ()
    finally:
        await on.core.close()
        await off.core.close()


def test_autoscaled_targets_need_min_or_max_replicas() -> None:
    low_only = plain_model("low", replicas=1, min_replicas=1)
    high_only = plain_model("high")
    high_only.deploymentSpec.maxReplicas = 4
    records = {
        spec.meta.name: ModelRecord(spec.meta.name, [ModelVersion(1, spec)])
        for spec in (low_only, high_only, plain_model("fixed", replicas=3))
    }
    records["gone"] = ModelRecord("gone", [ModelVersion(1, scaled_model("gone"))], deleted=True)
    records["empty"] = ModelRecord("empty")
    assert sorted(autoscaled_targets(records)) == ["high_1", "low_1"]
