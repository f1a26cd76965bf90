"""Scheduler use cases against a real cache and route publisher, a fake Envoy and fake agents."""

from __future__ import annotations

import asyncio
import time

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource
from scheduler import scheduling
from scheduler.core import ModelNotFound
from scheduler.state import ModelRecord, ModelState, ReplicaState
from tests.scheduler.fakes import Event, Harness, model, pending_ops, wait_until
from xdsserver.types import CLUSTER

LOAD, UNLOAD = "LOAD_MODEL", "UNLOAD_MODEL"


async def test_load_sends_load_to_the_agent(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    assert pending_ops(link) == [(LOAD, "iris", 1)]
    assert harness.version("iris").replicas[0].state is ReplicaState.Loading
    assert harness.state("iris") is ModelState.ModelProgressing


async def test_loaded_model_is_routed_to_its_replica_but_not_available_before_ack(
    harness: Harness,
) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.report(Event.LOADED, "iris", 1)
    route = harness.route("iris")
    assert route is not None
    assert [(s.target, s.weight) for s in route.splits] == [("iris_1", 1_000_000)]
    assert route.splits[0].endpoints[0].host == "10.0.0.1"
    assert harness.state("iris") is ModelState.ModelProgressing


async def test_model_is_available_once_envoy_acks_its_route(harness: Harness) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    assert harness.state("iris") is ModelState.ModelAvailable
    assert harness.version("iris").replicas[0].state is ReplicaState.Available


async def test_identical_load_is_a_no_op(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    pending_ops(link)
    await harness.load(model("iris"))
    assert pending_ops(link) == []
    assert [v.number for v in harness.scheduler.models["iris"].versions] == [1]
    assert harness.state("iris") is ModelState.ModelAvailable


async def test_at_the_model_limit_a_new_model_is_refused_and_known_ones_still_change(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler import core

    monkeypatch.setattr(core, "MAX_MODELS", 1)
    link = await harness.connect()
    await harness.load(model("iris"))
    with pytest.raises(InvalidResource, match="1 models are loaded already"):
        harness.scheduler.load_model(model("other"))
    assert set(harness.scheduler.models) == {"iris"}
    pending_ops(link)
    await harness.load(model("iris", uri="gs://models/iris-v2"))
    assert [v.number for v in harness.scheduler.models["iris"].versions] == [1, 2]


async def test_deployment_change_rescales_in_place(harness: Harness) -> None:
    link0 = await harness.connect(idx=0)
    link1 = await harness.connect(idx=1)
    await harness.load(model("iris", replicas=1))
    pending_ops(link0)
    await harness.load(model("iris", replicas=2))
    assert [v.number for v in harness.scheduler.models["iris"].versions] == [1]
    assert pending_ops(link0) == []
    assert pending_ops(link1) == [(LOAD, "iris", 1)]


async def test_new_spec_rolls_out_a_second_version_split_by_replicas(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    pending_ops(link)
    await harness.load(model("iris", uri="gs://models/iris-v2"))
    assert pending_ops(link) == [(LOAD, "iris", 2)]
    assert harness.targets("iris") == {"iris_1": 100}
    await harness.report(Event.LOADED, "iris", 2)
    assert harness.targets("iris") == {"iris_2": 50, "iris_1": 50}


async def test_new_version_becomes_available_once_the_split_route_is_acked(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    await harness.load(model("iris", uri="gs://models/iris-v2"))
    await harness.report(Event.LOADED, "iris", 2)
    pending_ops(link)
    await harness.envoy_applies()
    assert harness.state("iris", 2) is ModelState.ModelAvailable
    assert pending_ops(link) == []  # v1 stays loaded: Envoy still routes half the traffic to it


async def test_old_version_is_unloaded_only_after_envoy_acks_the_route_without_it(
    harness: Harness,
) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    await harness.load(model("iris", uri="gs://models/iris-v2"))
    await harness.make_available("iris", 2)  # Envoy holds the 50/50 route: v2 Available
    pending_ops(link)
    assert harness.targets("iris") == {"iris_2": 100}
    assert pending_ops(link) == []  # v1 is still in the route Envoy holds
    await harness.envoy_applies()
    assert pending_ops(link) == [(UNLOAD, "iris", 1)]
    await harness.report(Event.UNLOADED, "iris", 1)
    assert harness.state("iris", 1) is ModelState.ModelTerminated
    assert harness.state("iris", 2) is ModelState.ModelAvailable


async def test_unload_removes_route_then_unloads_after_ack(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    pending_ops(link)
    await harness.unload("iris")
    assert harness.route("iris") is None
    assert pending_ops(link) == []
    assert harness.state("iris") is ModelState.ModelTerminating
    await harness.envoy_applies()
    assert pending_ops(link) == [(UNLOAD, "iris", 1)]
    await harness.report(Event.UNLOADED, "iris", 1)
    assert "iris" not in harness.scheduler.models


async def test_schedule_fails_without_servers_then_loads_when_one_connects(harness: Harness) -> None:
    await harness.load(model("iris"))
    assert harness.state("iris") is ModelState.ScheduleFailed
    assert "no servers are registered" in harness.version("iris").reason
    link = await harness.connect()
    assert pending_ops(link) == [(LOAD, "iris", 1)]
    await harness.make_available("iris")
    assert harness.state("iris") is ModelState.ModelAvailable


async def test_schedule_fails_on_missing_capability_until_a_capable_server_connects(
    harness: Harness,
) -> None:
    await harness.connect("cpu", capabilities=("sklearn",))
    await harness.load(model("llm", requirements=("gpu",)))
    assert harness.state("llm") is ModelState.ScheduleFailed
    assert "server cpu lacks capabilities ['gpu']" in harness.version("llm").reason
    gpu = await harness.connect("gpu", capabilities=("gpu",))
    assert pending_ops(gpu) == [(LOAD, "llm", 1)]
    await harness.make_available("llm", server="gpu")
    assert harness.state("llm") is ModelState.ModelAvailable


async def test_load_failure_fails_the_model_with_the_agent_message(harness: Harness) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.report(Event.LOAD_FAILED, "iris", 1, message="artifact not found")
    assert harness.state("iris") is ModelState.ModelFailed
    assert harness.version("iris").reason == "artifact not found"
    assert harness.route("iris") is None


async def test_reconnecting_agent_keeps_its_models_without_a_new_load(harness: Harness) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    link = await harness.connect(loaded=[("iris", 1)])
    assert pending_ops(link) == []
    assert harness.state("iris") is ModelState.ModelAvailable
    assert harness.targets("iris") == {"iris_1": 100}


async def test_agent_reporting_an_unknown_model_is_told_to_unload_it(harness: Harness) -> None:
    link = await harness.connect(loaded=[("ghost", 3)])
    assert pending_ops(link) == [(UNLOAD, "ghost", 3)]


async def test_disconnected_agent_keeps_routes_for_the_grace_period(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    harness.scheduler.agent_disconnected(link)
    await harness.settle()
    assert harness.targets("iris") == {"iris_1": 100}
    await wait_until(lambda: harness.route("iris") is None)
    assert "mlserver" not in harness.scheduler.servers
    assert harness.state("iris") is ModelState.ScheduleFailed


async def test_agent_back_within_grace_keeps_the_replica(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    harness.scheduler.agent_disconnected(link)
    await harness.connect(loaded=[("iris", 1)])
    await asyncio.sleep(harness.grace_s * 2)  # the first link's grace period is over
    assert harness.targets("iris") == {"iris_1": 100}
    assert harness.state("iris") is ModelState.ModelAvailable


@pytest.mark.parametrize("name", ["Iris", "iris_1", "-iris", "", "x" * 64])
async def test_invalid_model_name_is_rejected_without_changes(harness: Harness, name: str) -> None:
    link = await harness.connect()
    with pytest.raises(InvalidResource):
        harness.scheduler.load_model(model(name))
    assert harness.scheduler.models == {}
    assert pending_ops(link) == []


async def test_invalid_names_on_unload_and_subscribe_are_rejected(harness: Harness) -> None:
    with pytest.raises(InvalidResource):
        harness.scheduler.unload_model("Not_Valid")
    with pytest.raises(InvalidResource):
        await harness.connect("Bad Server")
    assert harness.scheduler.servers == {}


async def test_stale_events_are_ignored(harness: Harness) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    await harness.report(Event.LOADED, "iris", 1)  # duplicate
    await harness.report(Event.UNLOADED, "iris", 1)  # never asked to unload
    await harness.report(Event.LOADED, "iris", 7)  # unknown version
    await harness.report(Event.LOADED, "nope", 1)  # unknown model
    assert harness.version("iris").replicas[0].state is ReplicaState.Available
    assert harness.state("iris") is ModelState.ModelAvailable


async def test_second_model_that_does_not_fit_in_memory_fails_to_schedule(harness: Harness) -> None:
    link = await harness.connect(memory=100)
    await harness.load(model("a", memory=60))
    await harness.load(model("b", memory=60))
    assert pending_ops(link) == [(LOAD, "a", 1)]
    assert harness.state("b") is ModelState.ScheduleFailed
    assert "has 40 bytes free, model needs 60" in harness.version("b").reason


async def test_memory_freed_by_an_unload_lets_a_waiting_model_load(harness: Harness) -> None:
    link = await harness.connect(memory=100)
    await harness.load(model("a", memory=60))
    await harness.report(Event.LOADED, "a", 1, memory=40)
    await harness.envoy_applies()
    await harness.load(model("b", memory=60))
    await harness.unload("a")
    await harness.envoy_applies()
    pending_ops(link)
    await harness.report(Event.UNLOADED, "a", 1, memory=100)
    assert pending_ops(link) == [(LOAD, "b", 1)]


async def test_a_model_waiting_for_memory_is_retried_at_every_release_until_it_fits(
    harness: Harness,
) -> None:
    link = await harness.connect(memory=100)
    for name in ("a", "b", "c"):
        await harness.load(model(name, memory=30))
        await harness.report(Event.LOADED, name, 1, memory=100 - 30 * (ord(name) - ord("a") + 1))
    await harness.envoy_applies()
    await harness.load(model("big", memory=50))
    assert harness.state("big") is ModelState.ScheduleFailed
    for name, free in (("a", 40), ("b", 70)):  # 40 bytes free is still short; 70 is enough
        await harness.unload(name)
        await harness.envoy_applies()
        pending_ops(link)
        await harness.report(Event.UNLOADED, name, 1, memory=free)
        if free < 50:
            assert harness.state("big") is ModelState.ScheduleFailed
    assert pending_ops(link) == [(LOAD, "big", 1)]


async def test_a_released_replica_retries_only_the_models_changed_since_the_last_retry(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scanning every model per agent event made unloading 5,000 of 10,000 models cost 15 ms each.
    await harness.connect(memory=10_000)
    names = [f"m{i}" for i in range(40)]
    for name in names:
        await harness.load(model(name, memory=10))
        await harness.report(Event.LOADED, name, 1)
    await harness.envoy_applies()
    await harness.unload("m0")
    await harness.envoy_applies()
    await harness.report(Event.UNLOADED, "m0", 1)  # a retry: checks what changed since connecting
    checked: list[int] = []
    unsatisfied = scheduling.unsatisfied

    def counting(records: list[ModelRecord]) -> list[ModelRecord]:
        checked.append(len(records))
        return unsatisfied(records)

    monkeypatch.setattr(scheduling, "unsatisfied", counting)
    await harness.load(model("m5", memory=10, uri="gs://models/iris-v2"))  # m5 changes
    await harness.unload("m1")
    await harness.envoy_applies()
    await harness.report(Event.UNLOADED, "m1", 1)
    assert "m1" not in harness.scheduler.models
    assert checked == [1]  # m5 alone: m1 is gone, the 37 models untouched since the last retry are not read


async def test_unloading_a_model_before_it_loaded_releases_its_memory(harness: Harness) -> None:
    link = await harness.connect(memory=100)
    await harness.load(model("a", memory=60))
    await harness.unload("a")
    await harness.envoy_applies()
    assert pending_ops(link) == [(LOAD, "a", 1), (UNLOAD, "a", 1)]
    await harness.report(Event.UNLOADED, "a", 1, memory=100)
    assert "a" not in harness.scheduler.models
    await harness.load(model("b", memory=60))
    assert pending_ops(link) == [(LOAD, "b", 1)]


async def test_rescale_that_moves_a_model_loads_every_replica_of_the_new_server(
    harness: Harness,
) -> None:
    await harness.connect("small", 0)
    big0 = await harness.connect("big", 0)
    big1 = await harness.connect("big", 1)
    await harness.load(model("iris", replicas=1))
    await harness.make_available("iris", server="small")
    await harness.load(model("iris", replicas=2))
    # Moving servers is a roll-out to a new version (as in Seldon); the old one keeps serving.
    assert pending_ops(big1) == [(LOAD, "iris", 2)]
    assert pending_ops(big0) == [(LOAD, "iris", 2)]
    assert harness.scheduler.models["iris"].versions[0].server == "small"
    assert harness.scheduler.models["iris"].versions[0].serving_replicas() == [0]


async def test_first_version_number_follows_the_kubernetes_generation(harness: Harness) -> None:
    spec = model("iris")
    spec.meta.kubernetesMeta.generation = 4
    await harness.load(spec)
    assert harness.version("iris").number == 4


async def test_unloading_an_unknown_model_is_not_found(harness: Harness) -> None:
    with pytest.raises(ModelNotFound):
        harness.scheduler.unload_model("nope")


async def test_model_listeners_hear_about_changes(harness: Harness) -> None:
    heard: list[str] = []
    stop = harness.scheduler.on_model_change(heard.append)
    await harness.connect()
    await harness.load(model("iris"))
    assert "iris" in heard
    stop()
    heard.clear()
    await harness.report(Event.LOADED, "iris", 1)
    assert heard == []


async def test_scale_down_unloads_the_extra_replica_after_envoy_drops_it(harness: Harness) -> None:
    link0, link1 = await harness.connect(idx=0), await harness.connect(idx=1)
    await harness.load(model("iris", replicas=2))
    await harness.report(Event.LOADED, "iris", 1, idx=0)
    await harness.make_available("iris", idx=1)
    pending_ops(link0)
    pending_ops(link1)
    await harness.load(model("iris", replicas=1))
    route = harness.route("iris")
    assert route is not None and [e.host for e in route.splits[0].endpoints] == ["10.0.0.1"]
    assert pending_ops(link1) == []
    await harness.envoy_applies()
    assert (pending_ops(link0), pending_ops(link1)) == ([], [(UNLOAD, "iris", 1)])
    await harness.report(Event.UNLOADED, "iris", 1, idx=1)
    assert harness.version("iris").active_replicas() == [0]
    assert harness.state("iris") is ModelState.ModelAvailable


async def test_stale_copy_on_a_returning_server_does_not_touch_the_real_replica(
    harness: Harness,
) -> None:
    old = await harness.connect("old")
    await harness.load(model("iris"))
    await harness.make_available("iris", server="old")
    harness.scheduler.agent_disconnected(old)
    await wait_until(lambda: "old" not in harness.scheduler.servers)
    await harness.connect("new")
    await harness.make_available("iris", server="new")
    returning = await harness.connect("old", loaded=[("iris", 1)])
    assert pending_ops(returning) == [(UNLOAD, "iris", 1)]
    assert harness.version("iris").replicas[0].state is ReplicaState.Available
    assert harness.targets("iris") == {"iris_1": 100}


async def test_drained_replica_keeps_serving_until_its_replacement_is_available(harness: Harness) -> None:
    link0, link1 = await harness.connect(idx=0), await harness.connect(idx=1)
    await harness.load(model("iris"))
    await harness.make_available("iris", idx=0)
    pending_ops(link0)

    drain = asyncio.create_task(harness.scheduler.drain("mlserver", 0))
    await harness.settle()
    # Make before break: replica 1 loads while replica 0 still takes the traffic.
    assert pending_ops(link1) == [(LOAD, "iris", 1)]
    route = harness.route("iris")
    assert route is not None and [e.host for e in route.splits[0].endpoints] == ["10.0.0.1"]
    assert not drain.done()

    await harness.make_available("iris", idx=1)
    await harness.envoy_applies()
    assert pending_ops(link0) == [(UNLOAD, "iris", 1)]
    await harness.report(Event.UNLOADED, "iris", 1, idx=0)
    await asyncio.wait_for(drain, 1)
    assert harness.version("iris").active_replicas() == [1]


async def test_drain_waits_for_a_model_with_nowhere_to_go_until_capacity_appears(harness: Harness) -> None:
    link0 = await harness.connect(idx=0)
    await harness.load(model("iris"))
    await harness.make_available("iris", idx=0)
    pending_ops(link0)
    drain = asyncio.create_task(harness.scheduler.drain("mlserver", 0))
    await harness.settle()
    assert not drain.done()  # nowhere to go: it keeps serving here, and the drain waits
    assert harness.state("iris") is ModelState.ModelAvailable
    assert harness.version("iris").schedule_error
    assert pending_ops(link0) == []
    link1 = await harness.connect(idx=1)  # capacity appears: the model moves, then the drain ends
    assert pending_ops(link1) == [(LOAD, "iris", 1)]
    await harness.make_available("iris", idx=1)
    await harness.envoy_applies()
    assert pending_ops(link0) == [(UNLOAD, "iris", 1)]
    await harness.report(Event.UNLOADED, "iris", 1, idx=0)
    await asyncio.wait_for(drain, 1)
    assert harness.version("iris").active_replicas() == [1]


async def test_a_server_declared_while_a_replica_drains_keeps_that_replica_out_of_placement(
    harness: Harness,
) -> None:
    """A scale-up declared (ServerNotify) while replica 0's agent drains: its count would keep replica
    0, but the agent is leaving; a model placed meanwhile must go to replica 1, not back onto 0."""
    link0, link1 = await harness.connect(idx=0), await harness.connect(idx=1)
    await harness.load(model("iris"))
    await harness.make_available("iris", idx=0)
    pending_ops(link0)
    drain = asyncio.create_task(harness.scheduler.drain("mlserver", 0))
    await harness.settle()
    assert pending_ops(link1) == [(LOAD, "iris", 1)]

    harness.scheduler.notify_servers(
        [scheduler_pb2.ServerNotify(name="mlserver", expectedReplicas=3, shared=True)]
    )
    assert harness.scheduler.servers["mlserver"].replicas[0].retiring
    await harness.load(model("other"))
    assert (pending_ops(link0), pending_ops(link1)) == ([], [(LOAD, "other", 1)])
    await harness.make_available("iris", idx=1)
    await harness.envoy_applies()
    await harness.report(Event.UNLOADED, "iris", 1, idx=0)
    await asyncio.wait_for(drain, 1)
    assert harness.version("iris").active_replicas() == [1]


async def test_draining_an_unknown_replica_is_not_found(harness: Harness) -> None:
    with pytest.raises(ModelNotFound):
        await harness.scheduler.drain("nowhere", 3)


async def test_a_route_envoy_rejects_fails_the_model_with_envoys_reason(harness: Harness) -> None:
    await harness.connect()
    await harness.load(model("iris"))
    await harness.report(Event.LOADED, "iris", 1)
    (http,) = [name for name in harness.cache.live(CLUSTER) if name.endswith("_http")]
    harness.envoy.reject(CLUSTER, http, f"cluster {http}: bad endpoint")
    await harness.settle()
    version = harness.version("iris")
    assert version.state is ModelState.ModelFailed
    assert f"Envoy rejected Cluster {http}: cluster {http}: bad endpoint" in version.reason


async def test_versions_share_their_replica_sets_clusters_unless_their_load_is_read_per_version(
    harness: Harness,
) -> None:
    await harness.connect()
    for name in ("a", "b"):
        await harness.load(model(name))
        await harness.make_available(name, 1)
    scaled = model("c")
    scaled.deploymentSpec.minReplicas, scaled.deploymentSpec.maxReplicas = 1, 2
    await harness.load(scaled)
    await harness.make_available("c", 1)
    # a and b on the one replica: one shared pair; c can autoscale: clusters of its own.
    assert sorted(n for n in harness.cache.live(CLUSTER) if not n.startswith("replicas_")) == [
        "c_1_grpc",
        "c_1_http",
    ]
    assert len(harness.cache.live(CLUSTER)) == 4


async def test_old_terminated_versions_are_forgotten_beyond_a_few(harness: Harness) -> None:
    await harness.connect()
    for number in range(1, 10):
        await harness.load(model("iris", uri=f"gs://models/iris-v{number}"))
        await harness.make_available("iris", number)
        await harness.envoy_applies()
        if number > 1:
            await harness.report(Event.UNLOADED, "iris", number - 1)
    numbers = [v.number for v in harness.scheduler.models["iris"].versions]
    assert numbers == [4, 5, 6, 7, 8, 9]  # five terminated versions of history, and the latest


async def test_an_unanswered_load_is_sent_again_then_failed(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    assert pending_ops(link) == [(LOAD, "iris", 1)]
    later = time.time() + 100
    harness.scheduler.expire_stuck(60, now=later)
    assert pending_ops(link) == [(LOAD, "iris", 1)]  # sent once more
    assert harness.version("iris").replicas[0].state is ReplicaState.Loading
    harness.scheduler.expire_stuck(60, now=later + 100)
    version = harness.version("iris")
    assert version.replicas[0].state is ReplicaState.LoadFailed
    assert version.state is ModelState.ModelFailed and "no answer from the agent within 60s" in version.reason


async def test_an_unanswered_unload_is_sent_again_then_failed(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    await harness.unload("iris")
    await harness.envoy_applies()
    pending_ops(link)
    later = time.time() + 100
    harness.scheduler.expire_stuck(60, now=later)
    assert pending_ops(link) == [(UNLOAD, "iris", 1)]
    harness.scheduler.expire_stuck(60, now=later + 100)
    assert "iris" not in harness.scheduler.models  # given up: nothing waits on that replica any more
    harness.scheduler.expire_stuck(60, now=later + 200)
    assert pending_ops(link) == []  # a failed operation is not retried for ever


async def test_an_unload_for_an_away_agent_waits_for_it_to_come_back(harness: Harness) -> None:
    link = await harness.connect()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    harness.scheduler.agent_disconnected(link)  # within its grace period
    await harness.unload("iris")
    await harness.envoy_applies()
    assert harness.version("iris").replicas[0].state is ReplicaState.UnloadEnvoyRequested  # not "Unloaded"
    back = await harness.connect(loaded=[("iris", 1)])
    assert pending_ops(back) == [(UNLOAD, "iris", 1)]
    assert harness.version("iris").replicas[0].state is ReplicaState.Unloading
