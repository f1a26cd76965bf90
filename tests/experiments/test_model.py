"""Experiment validation: every rule says what is wrong, and a valid message round-trips."""

from __future__ import annotations

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource
from experiments.model import Experiment, Mirror, ResourceType


def message(
    name: str = "ab",
    candidates: tuple[tuple[str, int], ...] = (("iris", 50), ("iris2", 50)),
    default: str | None = None,
    mirror: tuple[str, int] | None = None,
    resource_type: int = scheduler_pb2.MODEL,
) -> scheduler_pb2.Experiment:
    built = scheduler_pb2.Experiment(
        name=name,
        candidates=[scheduler_pb2.ExperimentCandidate(name=n, weight=w) for n, w in candidates],
        resourceType=resource_type,  # type: ignore[arg-type]
    )
    if default is not None:
        built.default = default
    if mirror is not None:
        built.mirror.name, built.mirror.percent = mirror
    return built


def test_a_valid_experiment_round_trips() -> None:
    original = message(default="iris", mirror=("iris3", 25))
    experiment = Experiment.from_proto(original)
    assert experiment.route_name == "ab.experiment"
    assert experiment.mirror == Mirror("iris3", 25)
    assert experiment.members == {"iris", "iris2", "iris3"}
    assert Experiment.from_proto(experiment.to_proto()) == experiment


def test_a_pipeline_experiment_takes_over_the_pipeline_endpoint() -> None:
    original = message(
        candidates=(("add10", 50), ("mul10", 50)),
        default="add10",
        mirror=("echo", 10),
        resource_type=scheduler_pb2.PIPELINE,
    )
    experiment = Experiment.from_proto(original)
    assert experiment.resource_type is ResourceType.PIPELINE
    assert experiment.default_route == "add10.pipeline"
    assert experiment.member_route("echo") == "echo.pipeline"
    assert Experiment.from_proto(experiment.to_proto()) == experiment
    single = Experiment.from_proto(message(candidates=(("mul10", 1),), resource_type=scheduler_pb2.PIPELINE))
    assert single.default_route is None and single.members == {"mul10"}


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (message(default="iris3"), "must be one of the candidates"),
        (message(candidates=()), "has no candidates"),
        (message(candidates=(("iris", 0), ("iris2", 0))), "all candidate weights are zero"),
        (message(candidates=(("iris", 1), ("iris", 2))), "listed twice"),
        (message(candidates=(("iris", 2_000_000),)), "is above"),
        (message(resource_type=7), "unknown resourceType 7"),
        (message(resource_type=scheduler_pb2.PIPELINE, default="p3"), "default pipeline 'p3' must be one"),
        (
            message(resource_type=scheduler_pb2.PIPELINE, candidates=(("p.pipeline", 1),)),
            "pipeline name 'p.pipeline' is invalid",
        ),
        (message(resource_type=scheduler_pb2.PIPELINE, mirror=("iris", 5)), "mirror pipeline 'iris' is also"),
        (
            message(resource_type=scheduler_pb2.PIPELINE, mirror=("M", 5)),
            "pipeline name 'M' is invalid",
        ),
        (message(resource_type=scheduler_pb2.PIPELINE, candidates=()), "has no candidates"),
        (message(name="Bad_Name"), "experiment name 'Bad_Name' is invalid"),
        (message(name="iris\n"), "is invalid"),
        (message(candidates=(("iris/..", 1),)), "is invalid"),
        (message(mirror=("iris", 100)), "is also a candidate"),
        (message(mirror=("iris3", 0)), "mirror percent must be 1..100"),
        (message(mirror=("iris3", 101)), "mirror percent must be 1..100"),
    ],
)
def test_invalid_experiments_are_refused_with_a_reason(bad: scheduler_pb2.Experiment, says: str) -> None:
    with pytest.raises(InvalidResource, match=None) as caught:
        Experiment.from_proto(bad)
    assert says in str(caught.value)
