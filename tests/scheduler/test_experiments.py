"""Experiment use cases against the real core, routing and route publisher, a fake Envoy and agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.routing import MirrorPolicy
from apis.validation import InvalidResource
from scheduler.experiments import ExperimentNotFound
from scheduler.state import ReplicaState
from tests.experiments.test_model import message
from tests.scheduler.fakes import Event, Harness, model


async def two_models(harness: Harness, *names: str) -> None:
    await harness.connect()
    for name in names:
        await harness.load(model(name))
        await harness.make_available(name)


def shares(harness: Harness, route: str) -> dict[str, int]:
    return harness.targets(route)


async def test_an_experiment_with_a_default_takes_over_its_endpoint_once_envoy_holds_it(
    harness: Harness,
) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris"))
    await harness.settle()
    assert shares(harness, "iris") == {"iris_1": 50, "iris2_1": 50}
    assert shares(harness, "ab.experiment") == {"iris_1": 50, "iris2_1": 50}
    assert shares(harness, "iris2") == {"iris2_1": 100}  # a plain candidate keeps its own endpoint
    status = harness.experiments.status("ab")
    assert not status.active and status.candidates_ready
    assert status.description == "waiting for every Envoy to apply the experiment's routes"
    await harness.envoy_applies()
    assert harness.experiments.status("ab").active
    assert harness.experiments.status("ab").description == "experiment active"


async def test_stop_gives_the_endpoint_back_and_removes_the_experiment_route(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris"))
    await harness.envoy_applies()
    harness.experiments.stop("ab")
    await harness.settle()
    assert shares(harness, "iris") == {"iris_1": 100}
    assert harness.route("ab.experiment") is None
    with pytest.raises(ExperimentNotFound):
        harness.experiments.status("ab")


async def test_a_candidate_unloaded_makes_it_inactive_and_the_default_serves_alone(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris"))
    await harness.envoy_applies()
    await harness.unload("iris2")
    await harness.settle()
    status = harness.experiments.status("ab")
    assert not status.active and not status.candidates_ready
    assert "candidate iris2 is not available" in status.description
    assert shares(harness, "iris") == {"iris_1": 100}
    assert harness.route("ab.experiment") is None

    await harness.envoy_applies()
    await harness.report(Event.UNLOADED, "iris2", 1)
    await harness.load(model("iris2"))  # loaded again: active again
    await harness.make_available("iris2", 1)  # a model loaded again starts again at version 1
    await harness.settle()
    await harness.envoy_applies()
    assert harness.experiments.status("ab").active
    assert shares(harness, "iris") == {"iris_1": 50, "iris2_1": 50}


async def test_editing_replaces_the_split_and_a_zero_arm_gets_nothing(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris", candidates=(("iris", 30), ("iris2", 70))))
    await harness.envoy_applies()
    harness.experiments.start(message(default="iris", candidates=(("iris", 100), ("iris2", 0))))
    await harness.settle()
    assert shares(harness, "iris") == {"iris_1": 100}
    assert shares(harness, "ab.experiment") == {"iris_1": 100}


async def test_changing_the_default_reverts_the_old_one(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2", "iris3")
    harness.experiments.start(message(default="iris", candidates=(("iris", 1), ("iris2", 1))))
    await harness.envoy_applies()
    harness.experiments.start(message(default="iris3", candidates=(("iris3", 1), ("iris2", 1))))
    await harness.settle()
    assert shares(harness, "iris") == {"iris_1": 100}
    assert shares(harness, "iris3") == {"iris3_1": 50, "iris2_1": 50}
    assert shares(harness, "iris2") == {"iris2_1": 100}


async def test_one_default_per_experiment_and_nothing_changes_on_rejection(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris"))
    with pytest.raises(InvalidResource, match="already in experiment ab as a baseline"):
        harness.experiments.start(message(name="other", default="iris"))
    with pytest.raises(InvalidResource):
        harness.experiments.start(message(name="ab", candidates=()))
    assert set(harness.experiments.experiments) == {"ab"}
    assert harness.experiments.experiments["ab"].candidates[0].weight == 50


async def test_a_default_freed_by_an_edit_or_a_stop_can_be_another_experiments_default(
    harness: Harness,
) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris"))
    harness.experiments.start(message(default="iris2"))  # ab edited: iris is free again
    harness.experiments.start(message(name="other", default="iris"))
    with pytest.raises(InvalidResource, match="already in experiment ab as a baseline"):
        harness.experiments.start(message(name="third", default="iris2"))
    harness.experiments.stop("ab")
    harness.experiments.start(message(name="third", default="iris2"))
    assert set(harness.experiments.experiments) == {"other", "third"}


async def test_at_the_limit_new_experiments_are_refused_and_edits_still_apply(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler import experiments as module

    monkeypatch.setattr(module, "MAX_EXPERIMENTS", 1)
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message())
    with pytest.raises(InvalidResource, match="1 experiments are running already"):
        harness.experiments.start(message(name="other"))
    harness.experiments.start(message(default="iris2"))
    assert set(harness.experiments.experiments) == {"ab"}
    assert harness.experiments.experiments["ab"].default == "iris2"


async def test_a_mirror_route_exists_only_while_the_mirror_is_ready(harness: Harness) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message(default="iris", candidates=(("iris", 1),), mirror=("iris2", 100)))
    await harness.envoy_applies()
    route = harness.route("iris")
    assert route is not None and route.mirror == MirrorPolicy("iris2.mirror", 1_000_000)
    assert shares(harness, "iris2.mirror") == {"iris2_1": 100}
    assert harness.experiments.status("ab").active
    harness.experiments.stop("ab")
    await harness.settle()
    assert harness.route("iris2.mirror") is None
    route = harness.route("iris")
    assert route is not None and route.mirror is None


async def test_a_version_named_by_an_experiment_is_unloaded_only_once_no_route_names_it(
    harness: Harness,
) -> None:
    await two_models(harness, "iris", "iris2")
    harness.experiments.start(message())  # no default: iris_1 is named by iris and ab.experiment
    await harness.envoy_applies()
    await harness.load(model("iris", uri="gs://models/iris-v2"))
    await harness.make_available("iris", 2)
    # Both routes were re-planned without iris_1, but Envoy has not ACKed them yet.
    assert shares(harness, "iris") == {"iris_2": 100}
    assert shares(harness, "ab.experiment") == {"iris_2": 50, "iris2_1": 50}
    assert harness.version("iris", 1).replicas[0].state is ReplicaState.UnloadEnvoyRequested
    await harness.envoy_applies()
    assert harness.version("iris", 1).replicas[0].state is ReplicaState.Unloading


def test_experiment_status_conversion_carries_kubernetes_meta() -> None:
    from experiments.model import Experiment
    from scheduler import status as convert
    from scheduler.experiments import Status

    experiment = Experiment.from_proto(message())
    response = convert.experiment_status(experiment, Status(True, True, True, "experiment active"))
    assert response == scheduler_pb2.ExperimentStatusResponse(
        experimentName="ab",
        active=True,
        candidatesReady=True,
        mirrorReady=True,
        statusDescription="experiment active",
    )


async def test_experiments_are_persisted_and_restored_with_their_routes(tmp_path: Path) -> None:
    first = Harness(store_path=tmp_path / "state.db")
    await first.connect()
    for name in ("iris", "iris2"):
        await first.load(model(name))
        await first.make_available(name)
    first.experiments.start(message(default="iris", mirror=None))
    first.scheduler.commit()
    await first.scheduler.close()

    second = Harness(store_path=tmp_path / "state.db")
    second.scheduler.restore()
    second.experiments.restore()
    await second.settle()
    assert set(second.experiments.experiments) == {"ab"}
    assert second.targets("ab.experiment") == {"iris_1": 50, "iris2_1": 50}
    assert second.targets("iris") == {"iris_1": 50, "iris2_1": 50}
    await second.scheduler.close()
