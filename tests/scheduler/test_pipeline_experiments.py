"""Pipeline experiments (resourceType pipeline) against the real core, pipelines, routing and route
publisher, a fake Envoy, agents and an in-process dataflow engine session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.routing import Endpoint, MirrorPolicy
from apis.validation import InvalidResource
from experiments.model import ResourceType
from scheduler.pipeline_records import PipelineStatus
from tests.experiments.test_model import message
from tests.scheduler.fakes import Harness, model
from tests.scheduler.test_pipelines import answer, drain

GATEWAY = Endpoint("127.0.0.1", 9010, 9011)
PIPELINE = scheduler_pb2.PIPELINE


def one_step(name: str, step: str) -> scheduler_pb2.Pipeline:
    return scheduler_pb2.Pipeline(
        name=name,
        steps=[scheduler_pb2.PipelineStep(name=step)],
        output=scheduler_pb2.PipelineOutput(steps=[step]),
    )


@pytest.fixture
async def ready() -> AsyncIterator[Harness]:
    """Models add10/mul10 available; pipelines p-add10 (add10) and p-mul10 (mul10) Ready."""
    harness = Harness(gateway=GATEWAY)
    await harness.connect()
    for name in ("add10", "mul10"):
        await harness.load(model(name))
        await harness.make_available(name)
    engine = harness.pipelines.engine_subscribed("engine-0")
    for name, step in (("p-add10", "add10"), ("p-mul10", "mul10")):
        harness.pipelines.load(one_step(name, step))
    drain(engine)
    for name in ("p-add10", "p-mul10"):
        answer(harness.pipelines, "engine-0", name, 1)
    await harness.envoy_applies()
    assert harness.pipelines.ready("p-add10") and harness.pipelines.ready("p-mul10")
    yield harness
    await harness.scheduler.close()


def addmul(**fields: object) -> scheduler_pb2.Experiment:
    values: dict[str, object] = {
        "name": "addmul10",
        "candidates": (("p-add10", 50), ("p-mul10", 50)),
        "default": "p-add10",
        "resource_type": PIPELINE,
    }
    values.update(fields)
    return message(**values)  # type: ignore[arg-type]


async def test_the_default_pipelines_endpoint_is_split_between_candidate_pipelines(ready: Harness) -> None:
    ready.experiments.start(addmul())
    await ready.settle()
    split = {"p-add10.pipeline": 50, "p-mul10.pipeline": 50}
    assert ready.targets("p-add10.pipeline") == split
    assert ready.targets("addmul10.experiment") == split
    assert ready.targets("p-mul10.pipeline") == {"p-mul10.pipeline": 100}  # not the default: its own
    assert ready.targets("p-add10") == {}  # no model endpoint of that name is touched
    route = ready.route("p-add10.pipeline")
    assert route is not None and {s.endpoints for s in route.splits} == {(GATEWAY,)}
    assert not ready.experiments.status("addmul10").active
    await ready.envoy_applies()
    status = ready.experiments.status("addmul10")
    assert status.active and status.description == "experiment active"
    # Being taken over does not make the default pipeline any less ready.
    latest = ready.pipelines.records["p-add10"].latest
    assert latest.status is PipelineStatus.PipelineReady and ready.pipelines.ready("p-add10")

    ready.experiments.stop("addmul10")
    await ready.settle()
    assert ready.targets("p-add10.pipeline") == {"p-add10.pipeline": 100}
    assert ready.route("addmul10.experiment") is None
    assert ready.pipelines.ready("p-add10")  # no flicker while Envoy still holds the split
    await ready.envoy_applies()
    assert ready.pipelines.ready("p-add10")


async def test_a_single_candidate_experiment_routes_everything_to_it(ready: Harness) -> None:
    ready.experiments.start(message(name="solo", candidates=(("p-mul10", 1),), resource_type=PIPELINE))
    await ready.envoy_applies()
    assert ready.targets("solo.experiment") == {"p-mul10.pipeline": 100}
    assert ready.experiments.status("solo").active


async def test_a_mirror_pipeline_gets_its_own_route_and_every_route_copies_to_it(ready: Harness) -> None:
    ready.experiments.start(addmul(candidates=(("p-add10", 100),), mirror=("p-mul10", 100)))
    await ready.envoy_applies()
    assert ready.targets("p-mul10.pipeline.mirror") == {"p-mul10.pipeline": 100}
    for name in ("p-add10.pipeline", "addmul10.experiment"):
        route = ready.route(name)
        assert route is not None and route.mirror == MirrorPolicy("p-mul10.pipeline.mirror", 1_000_000)
        assert ready.targets(name) == {"p-add10.pipeline": 100}
    status = ready.experiments.status("addmul10")
    assert status.active and status.mirror_ready
    ready.experiments.stop("addmul10")
    await ready.settle()
    assert ready.route("p-mul10.pipeline.mirror") is None
    assert ready.route("p-mul10.pipeline") is not None  # the mirror pipeline's own endpoint stays


async def test_a_candidate_pipeline_losing_its_model_falls_back_to_the_default(ready: Harness) -> None:
    ready.experiments.start(addmul())
    await ready.envoy_applies()
    await ready.unload("mul10")
    await ready.settle()
    status = ready.experiments.status("addmul10")
    assert not status.active and not status.candidates_ready
    assert "candidate p-mul10 is not available (its models are not all available)" in status.description
    assert ready.targets("p-add10.pipeline") == {"p-add10.pipeline": 100}
    assert ready.route("addmul10.experiment") is None
    await ready.load(model("mul10"))
    await ready.make_available("mul10", 2)
    await ready.envoy_applies()
    assert ready.experiments.status("addmul10").active
    assert ready.targets("p-add10.pipeline") == {"p-add10.pipeline": 50, "p-mul10.pipeline": 50}


async def test_a_pipeline_not_loaded_yet_is_accepted_and_named_until_it_is(ready: Harness) -> None:
    ready.experiments.start(addmul(candidates=(("p-add10", 1), ("later", 1))))
    await ready.settle()
    status = ready.experiments.status("addmul10")
    assert not status.active and status.description == "candidate later is not available (no such pipeline)"
    assert ready.targets("p-add10.pipeline") == {"p-add10.pipeline": 100}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (addmul(candidates=(("p-add10", 1), ("mul10", 1))), "'mul10' is a model, not a pipeline"),
        (addmul(mirror=("add10", 5)), "'add10' is a model, not a pipeline"),
        (message(candidates=(("add10", 1), ("p-mul10", 1))), "'p-mul10' is a pipeline, not a model"),
        (addmul(default="nope"), "default pipeline 'nope' must be one of the candidates"),
        (addmul(candidates=()), "has no candidates"),
    ],
)
async def test_bad_pipeline_experiments_are_refused_and_change_nothing(
    ready: Harness, bad: scheduler_pb2.Experiment, says: str
) -> None:
    before = {name: ready.route(name) for name in ("p-add10.pipeline", "p-mul10.pipeline", "add10")}
    with pytest.raises(InvalidResource, match=None) as caught:
        ready.experiments.start(bad)
    assert says in str(caught.value)
    await ready.settle()
    assert ready.experiments.experiments == {}
    assert {name: ready.route(name) for name in before} == before


async def test_a_pipeline_is_the_default_of_one_experiment_only(ready: Harness) -> None:
    ready.experiments.start(addmul())
    with pytest.raises(InvalidResource, match="pipeline p-add10 already in experiment addmul10 as a"):
        ready.experiments.start(addmul(name="again"))
    # A model of another name as a default is unaffected by the pipeline's baseline.
    ready.experiments.start(message(name="models", candidates=(("add10", 1), ("mul10", 1)), default="add10"))
    await ready.envoy_applies()
    assert set(ready.experiments.experiments) == {"addmul10", "models"}
    assert ready.targets("add10") == {"add10_1": 50, "mul10_1": 50}


async def test_without_pipelines_served_a_pipeline_experiment_stays_inactive_with_a_reason() -> None:
    harness = Harness()  # no pipeline gateway: pipelines have no routes
    try:
        harness.pipelines.load(one_step("p-add10", "add10"))
        harness.experiments.start(message(name="x", candidates=(("p-add10", 1),), resource_type=PIPELINE))
        await harness.settle()
        status = harness.experiments.status("x")
        assert not status.active and "candidate p-add10 is not available" in status.description
    finally:
        await harness.scheduler.close()


async def test_a_pipeline_experiment_is_restored_and_splits_once_its_pipelines_run_again(
    tmp_path: Path,
) -> None:
    first = Harness(store_path=tmp_path / "state.db", gateway=GATEWAY)
    first.pipelines.load(one_step("p-add10", "add10"))
    first.pipelines.load(one_step("p-mul10", "mul10"))
    first.experiments.start(addmul())
    first.scheduler.commit()
    await first.scheduler.close()

    second = Harness(store_path=tmp_path / "state.db", gateway=GATEWAY)
    second.scheduler.restore()
    second.pipelines.restore()
    second.experiments.restore()
    await second.settle()
    restored = second.experiments.get("addmul10")
    assert restored.resource_type is ResourceType.PIPELINE and restored.default_route == "p-add10.pipeline"
    assert not second.experiments.status("addmul10").active  # no engine, no models yet
    await second.connect()
    for name in ("add10", "mul10"):
        await second.load(model(name))
        await second.make_available(name)
    engine = second.pipelines.engine_subscribed("engine-0")
    drain(engine)
    for name in ("p-add10", "p-mul10"):
        answer(second.pipelines, "engine-0", name, 1)
    await second.settle()
    await second.envoy_applies()  # the pipelines' own routes (published once an engine runs them)
    await second.envoy_applies()  # then the experiment's takeover of p-add10.pipeline
    assert second.experiments.status("addmul10").active
    assert second.targets("p-add10.pipeline") == {"p-add10.pipeline": 50, "p-mul10.pipeline": 50}
    await second.scheduler.close()
