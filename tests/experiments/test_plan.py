"""Traffic plans: candidate shares times version splits in millionths, takeover, mirror, fallback."""

from __future__ import annotations

from apis.routing import WEIGHT_SCALE, Endpoint, MirrorPolicy, Route, Split
from experiments.model import Candidate, Experiment, Mirror, ResourceType
from experiments.plan import Member, plan

A = Endpoint("10.0.0.1", 9000, 9500)
B = Endpoint("10.0.0.2", 9000, 9500)


def own(name: str, *versions: tuple[int, int]) -> Member:
    """A ready model whose own route splits ``(version, weight in millionths)``."""
    splits = tuple(Split(f"{name}_{v}", w, (A,)) for v, w in versions)
    return Member(True, "", Route(name, splits))


def weights(route: Route | None) -> dict[str, int]:
    assert route is not None
    return {s.target: s.weight for s in route.splits}


def test_candidate_shares_are_split_again_over_their_versions() -> None:
    experiment = Experiment("ab", (Candidate("iris", 1), Candidate("iris2", 2)))
    members = {"iris": own("iris", (2, 500_000), (1, 500_000)), "iris2": own("iris2", (1, WEIGHT_SCALE))}
    result = plan(experiment, members)
    assert result.candidates_ready and result.mirror_ready and not result.problems
    assert weights(result.route("ab.experiment")) == {
        "iris_2": 166_667,
        "iris_1": 166_666,
        "iris2_1": 666_667,
    }
    assert result.route("iris") is None  # no default: nothing taken over


def test_an_experiment_routes_each_candidate_through_the_clusters_its_own_route_uses() -> None:
    experiment = Experiment("ab", (Candidate("iris", 1), Candidate("iris2", 1)))
    scaled = Member(True, "", Route("iris", (Split("iris_1", WEIGHT_SCALE, (A,), own_clusters=True),)))
    result = plan(experiment, {"iris": scaled, "iris2": own("iris2", (1, WEIGHT_SCALE))})
    route = result.route("ab.experiment")
    assert route is not None
    assert {s.target: s.own_clusters for s in route.splits} == {"iris_1": True, "iris2_1": False}


def test_a_default_is_taken_over_with_the_same_split() -> None:
    experiment = Experiment("ab", (Candidate("iris", 30), Candidate("iris2", 70)), default="iris")
    members = {"iris": own("iris", (1, WEIGHT_SCALE)), "iris2": own("iris2", (1, WEIGHT_SCALE))}
    result = plan(experiment, members)
    assert weights(result.route("iris")) == weights(result.route("ab.experiment"))
    assert weights(result.route("iris")) == {"iris_1": 300_000, "iris2_1": 700_000}


def test_a_zero_weight_arm_gets_no_split_at_all() -> None:
    experiment = Experiment("ab", (Candidate("iris", 100), Candidate("iris2", 0)), default="iris")
    members = {"iris": own("iris", (1, WEIGHT_SCALE)), "iris2": own("iris2", (1, WEIGHT_SCALE))}
    assert weights(plan(experiment, members).route("iris")) == {"iris_1": WEIGHT_SCALE}


def test_a_candidate_not_ready_leaves_no_split_and_names_the_reason() -> None:
    experiment = Experiment("ab", (Candidate("iris", 1), Candidate("iris2", 1)), default="iris")
    members = {"iris": own("iris", (1, WEIGHT_SCALE)), "iris2": Member(False, "ModelProgressing", None)}
    result = plan(experiment, members)
    assert result.routes == () and not result.candidates_ready
    assert result.problems == ("candidate iris2 is not available (ModelProgressing)",)
    assert plan(experiment, {"iris": own("iris", (1, WEIGHT_SCALE))}).problems == (
        "candidate iris2 is not available (no such model)",
    )


def test_a_mirror_gets_its_own_route_and_every_experiment_route_copies_to_it() -> None:
    experiment = Experiment("m", (Candidate("iris", 1),), default="iris", mirror=Mirror("iris2", 40))
    members = {"iris": own("iris", (1, WEIGHT_SCALE)), "iris2": own("iris2", (3, WEIGHT_SCALE))}
    result = plan(experiment, members)
    policy = MirrorPolicy("iris2.mirror", 400_000)
    assert result.route("iris") == Route("iris", (Split("iris_1", WEIGHT_SCALE, (A,)),), policy)
    assert result.route("m.experiment") == Route(
        "m.experiment", (Split("iris_1", WEIGHT_SCALE, (A,)),), policy
    )
    assert weights(result.route("iris2.mirror")) == {"iris2_3": WEIGHT_SCALE}


def test_a_mirror_not_ready_is_left_out_and_reported() -> None:
    experiment = Experiment("m", (Candidate("iris", 1),), mirror=Mirror("iris2", 100))
    result = plan(experiment, {"iris": own("iris", (1, WEIGHT_SCALE))})
    assert result.candidates_ready and not result.mirror_ready
    assert result.route("m.experiment") == Route("m.experiment", (Split("iris_1", WEIGHT_SCALE, (A,)),))
    assert result.problems == ("mirror iris2 is not available (no such model)",)


GATEWAY = Endpoint("127.0.0.1", 9010, 9011)


def pipeline_member(name: str) -> Member:
    """A ready pipeline: its own route sends ``<p>.pipeline`` to the pipeline gateway."""
    return Member(True, "", Route(f"{name}.pipeline", (Split(f"{name}.pipeline", WEIGHT_SCALE, (GATEWAY,)),)))


def test_a_pipeline_experiment_splits_the_default_pipelines_endpoint_between_candidates() -> None:
    experiment = Experiment(
        "addmul10",
        (Candidate("add10", 50), Candidate("mul10", 50)),
        default="add10",
        resource_type=ResourceType.PIPELINE,
    )
    result = plan(experiment, {"add10": pipeline_member("add10"), "mul10": pipeline_member("mul10")})
    split = {"add10.pipeline": 500_000, "mul10.pipeline": 500_000}
    assert weights(result.route("addmul10.experiment")) == split
    assert weights(result.route("add10.pipeline")) == split  # the takeover is the pipeline's endpoint
    assert result.route("add10") is None  # never a model's endpoint of the same name
    assert {s.endpoints for s in result.routes[0].splits} == {(GATEWAY,)}


def test_a_single_candidate_pipeline_experiment_gets_all_the_traffic() -> None:
    # The reference produced an empty split here; one candidate must take 100 %.
    experiment = Experiment("solo", (Candidate("mul10", 1),), resource_type=ResourceType.PIPELINE)
    result = plan(experiment, {"mul10": pipeline_member("mul10")})
    assert result.candidates_ready and result.problems == ()
    assert weights(result.route("solo.experiment")) == {"mul10.pipeline": WEIGHT_SCALE}


def test_a_pipeline_mirror_is_routed_as_its_endpoint_and_a_missing_pipeline_is_named() -> None:
    experiment = Experiment(
        "m",
        (Candidate("add10", 100),),
        default="add10",
        mirror=Mirror("mul10", 100),
        resource_type=ResourceType.PIPELINE,
    )
    result = plan(experiment, {"add10": pipeline_member("add10"), "mul10": pipeline_member("mul10")})
    assert weights(result.route("mul10.pipeline.mirror")) == {"mul10.pipeline": WEIGHT_SCALE}
    taken = result.route("add10.pipeline")
    assert taken is not None and taken.mirror == MirrorPolicy("mul10.pipeline.mirror", WEIGHT_SCALE)
    missing = plan(experiment, {"add10": pipeline_member("add10")})
    assert not missing.mirror_ready
    assert missing.problems == ("mirror mul10 is not available (no such pipeline)",)
    assert plan(experiment, {}).problems[0] == "candidate add10 is not available (no such pipeline)"
