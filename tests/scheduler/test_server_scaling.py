"""Server autoscaling decisions (scheduler/server_scaling.py) on hand-built state and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler.server_scaling import ScalingRequest, ScalingSettings, ServerScaler
from scheduler.state import ModelRecord, ModelVersion, ReplicaState, Server, ServerReplica

GRACE = 30.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def server(
    name: str = "auto", *, replicas: int = 2, expected: int | None = None, low: int = 1, high: int = 4
) -> Server:
    found = Server(name, expected_replicas=replicas if expected is None else expected)
    found.min_replicas, found.max_replicas = low, high
    for idx in range(replicas):
        config = agent_pb2.ReplicaConfig(capabilities=["sklearn", name])
        found.replicas[idx] = ServerReplica(name, idx, config, available_memory=10**9)
    return found


def placed(name: str, on: str, replicas: list[int], *, desired: int | None = None) -> ModelRecord:
    spec = scheduler_pb2.Model(meta=scheduler_pb2.MetaData(name=name))
    spec.modelSpec.requirements.append("sklearn")
    spec.deploymentSpec.replicas = len(replicas) if desired is None else desired
    version = ModelVersion(1, spec, server=on)
    for idx in replicas:
        version.set_replica(idx, ReplicaState.Available)
    return ModelRecord(name, [version])


def unplaced(name: str, desired: int, *requirements: str) -> ModelRecord:
    record = placed(name, "", [], desired=desired)
    record.latest.spec.modelSpec.requirements.extend(requirements)
    record.latest.schedule_error = "no matching server had enough suitable replicas"
    return record


def scaler(clock: Clock, **settings: object) -> ServerScaler:
    return ServerScaler(ScalingSettings(grace_s=GRACE, **settings), clock)  # type: ignore[arg-type]


def test_a_model_wanting_more_replicas_than_its_server_has_asks_for_them() -> None:
    scaling = scaler(Clock())
    requests = scaling.decide([server(replicas=2)], [placed("wide", "auto", [0, 1], desired=3)])
    assert requests == [ScalingRequest("auto", 3, "model wide wants 3 replicas, server has 2")]


def test_scale_up_never_asks_beyond_max_replicas() -> None:
    scaling = scaler(Clock())
    [request] = scaling.decide([server(replicas=2, high=3)], [placed("wide", "auto", [0, 1], desired=5)])
    assert request.replicas == 3 and "capped at maxReplicas 3" in request.reason
    at_max = server(replicas=3, high=3)
    assert scaler(Clock()).decide([at_max], [placed("wide", "auto", [0, 1, 2], desired=5)]) == []


def test_no_scale_up_without_max_replicas_or_a_declaration() -> None:
    wide = placed("wide", "auto", [0], desired=3)
    assert scaler(Clock()).decide([server(replicas=1, high=0)], [wide]) == []
    assert scaler(Clock()).decide([server(replicas=1, low=0, high=0)], [wide]) == []
    assert scaler(Clock()).decide([server(replicas=1, expected=-1)], [wide]) == []  # agents only
    assert (
        scaler(Clock()).decide(
            [server(replicas=1)],
            [wide],
        )
        != []
    )


def test_an_unplaced_model_grows_the_first_autoscaled_server_that_can_run_it() -> None:
    servers = [
        server("fixed", replicas=1, low=0, high=0),
        server("big", replicas=1),
        server("auto", replicas=1),
    ]
    requests = scaler(Clock()).decide(servers, [unplaced("wide", 3, "auto")])
    assert requests == [ScalingRequest("auto", 3, "model wide wants 3 replicas, server has 1")]
    # Without a capability only one server has, the first by name that accepts it grows.
    assert [r.server for r in scaler(Clock()).decide(servers, [unplaced("any", 2)])] == ["auto"]


def test_a_request_is_sent_once_then_again_only_after_the_resend_interval() -> None:
    clock = Clock()
    scaling = scaler(clock, resend_s=10.0)
    state = ([server(replicas=1)], [placed("wide", "auto", [0], desired=2)])
    assert len(scaling.decide(*state)) == 1
    clock.now += 9
    assert scaling.decide(*state) == []
    clock.now += 1
    assert len(scaling.decide(*state)) == 1  # the controller may have missed it


def test_an_empty_replica_is_released_only_after_the_grace_period() -> None:
    clock = Clock()
    scaling = scaler(clock)
    auto = server(replicas=2)
    models = [placed("iris", "auto", [0])]
    assert scaling.decide([auto], models) == []  # replica 1 just became empty
    clock.now += GRACE - 0.1
    assert scaling.decide([auto], models) == []
    clock.now += 0.1
    assert scaling.decide([auto], models) == [ScalingRequest("auto", 1, "replicas [1] held no model for 30s")]


def test_a_replica_that_holds_a_model_again_restarts_its_grace_period() -> None:
    clock = Clock()
    scaling = scaler(clock)
    auto = server(replicas=2)
    assert scaling.decide([auto], [placed("iris", "auto", [0])]) == []
    clock.now += GRACE / 2
    assert scaling.decide([auto], [placed("iris", "auto", [0]), placed("b", "auto", [1])]) == []
    clock.now += GRACE / 2
    assert scaling.decide([auto], [placed("iris", "auto", [0])]) == []  # empty again since now
    clock.now += GRACE
    assert [r.replicas for r in scaling.decide([auto], [placed("iris", "auto", [0])])] == [1]


def test_a_replica_still_unloading_is_not_empty() -> None:
    clock = Clock()
    scaling = scaler(clock)
    leaving = placed("iris", "auto", [0, 1])
    leaving.latest.set_replica(1, ReplicaState.Unloading)
    scaling.decide([server(replicas=2)], [leaving])
    clock.now += GRACE * 2
    assert scaling.decide([server(replicas=2)], [leaving]) == []


def test_scale_down_stays_within_min_replicas_and_what_models_want() -> None:
    clock = Clock()
    scaling = scaler(clock)
    auto = server(replicas=4, low=2)
    scaling.decide([auto], [])
    clock.now += GRACE
    [request] = scaling.decide([auto], [])
    assert request.replicas == 2  # four empty replicas, but minReplicas is 2
    scaling = scaler(clock)
    wide = placed("wide", "auto", [0, 1, 2], desired=3)
    wide.latest.set_replica(2, ReplicaState.Unloaded)  # being placed again: it still wants 3
    scaling.decide([auto], [wide])
    clock.now += GRACE
    assert [r.replicas for r in scaling.decide([auto], [wide])] == [3]


def test_a_server_at_min_replicas_or_one_is_never_scaled_down() -> None:
    clock = Clock()
    for auto in (server(replicas=1, low=0), server(replicas=2, low=2)):
        scaling = scaler(clock)
        scaling.decide([auto], [])
        clock.now += GRACE * 2
        assert scaling.decide([auto], []) == []


def test_retiring_and_disconnected_replicas_do_not_count_as_empty() -> None:
    clock = Clock()
    scaling = scaler(clock)
    auto = server(replicas=3)
    auto.replicas[1].connected = False
    auto.replicas[2].retiring = True
    scaling.decide([auto], [placed("iris", "auto", [0])])
    clock.now += GRACE
    assert scaling.decide([auto], [placed("iris", "auto", [0])]) == []


def test_scaling_off_asks_for_nothing() -> None:
    scaling = ServerScaler(ScalingSettings(enabled=False), Clock())
    assert scaling.decide([server(replicas=1)], [placed("wide", "auto", [0], desired=3)]) == []


def test_packing_releases_a_replica_when_models_fit_on_fewer_after_the_grace_period() -> None:
    clock = Clock()
    # Three replicas, no empty one; the largest model wants 2: one replica can go.
    models = [placed("a", "auto", [0, 1]), placed("b", "auto", [2])]
    off = scaler(clock)
    on = scaler(clock, packing=True)
    for scaling in (off, on):
        assert scaling.decide([server(replicas=3)], models) == []
    clock.now += GRACE
    assert off.decide([server(replicas=3)], models) == []
    [request] = on.decide([server(replicas=3)], models)
    assert request.replicas == 2 and request.reason.startswith("packing")
    # Never below what the largest model wants.
    packed = scaler(clock, packing=True)
    wide = [placed("a", "auto", [0, 1, 2])]
    packed.decide([server(replicas=3)], wide)
    clock.now += GRACE
    assert packed.decide([server(replicas=3)], wide) == []


def test_a_server_that_goes_away_is_forgotten() -> None:
    clock = Clock()
    scaling = scaler(clock)
    assert len(scaling.decide([server(replicas=1)], [placed("wide", "auto", [0], desired=2)])) == 1
    assert scaling.decide([], []) == []
    assert len(scaling.decide([server(replicas=1)], [placed("wide", "auto", [0], desired=2)])) == 1


class Untouchable:
    """Models that must not be walked: every decision runs once a second, at any model count."""

    def __iter__(self) -> None:
        raise AssertionError("the models were walked")


def test_without_an_autoscaled_server_the_models_are_not_walked() -> None:
    scaling = scaler(Clock())
    plain = server(replicas=2, low=0, high=0)
    assert scaling.decide([plain], Untouchable()) == []  # type: ignore[arg-type]
    assert scaling.decide([], Untouchable()) == []  # type: ignore[arg-type]


def test_a_replica_count_index_replaces_walking_the_models_per_server() -> None:
    clock = Clock()
    scaling = scaler(clock)
    auto = server(replicas=2)
    models = [placed("iris", "auto", [0])]
    index = {"auto": {0: 1}}
    assert scaling.decide([auto], models, index.__getitem__) == []
    clock.now += GRACE
    expected = [ScalingRequest("auto", 1, "replicas [1] held no model for 30s")]
    assert scaling.decide([auto], models, index.__getitem__) == expected
    index["auto"][1] = 1  # replica 1 holds a model again (the index says so, not the list)
    clock.now += GRACE
    assert scaling.decide([auto], models, index.__getitem__) == []
