"""``spread-hash`` places by consistent hashing: deterministic, and stable when replicas come and go."""

from __future__ import annotations

from apis.hash_ring import ring_order
from scheduler.placement import Placement, Policy
from scheduler.policies import load_policy
from scheduler.state import ReplicaState, Server
from tests.placement.fleet import GiB, assignment, model, place_all, replica, server, two_servers, workload

# The fixed workload on the fixed fleet: md5-based, so identical in every process and on every host.
GOLDEN = {
    "iris": ("mlserver-b/0",),
    "income": ("mlserver-a/1",),
    "mnist": ("mlserver-b/0", "mlserver-b/2"),
    "cifar10": ("mlserver-a/1",),
    "sentiment": ("mlserver-a/1",),
    "fraud": ("mlserver-a/2",),
    "churn": ("mlserver-b/1", "mlserver-b/0"),
    "wine": ("mlserver-b/1",),
    "housing": ("mlserver-a/0",),
    "titanic": ("mlserver-a/0",),
    "digits": ("mlserver-b/1",),
    "spam": ("mlserver-b/0",),
}


def with_new_replica(servers: list[Server], index: int) -> list[Server]:
    target = servers[index]
    idx = len(target.replicas)
    target.replicas[idx] = replica(target.name, idx, free=8 * GiB, capacity=8 * GiB)
    return servers


def test_fixed_workload_is_deterministic_and_spread() -> None:
    results = assignment(place_all(load_policy("spread-hash"), workload(), two_servers()))
    assert results == GOLDEN
    assert results != assignment(place_all(Policy(), workload(), two_servers()))
    assert len({r for replicas in results.values() for r in replicas}) == 6  # every replica gets work


def test_adding_a_replica_keeps_most_models_in_place() -> None:
    policy = load_policy("spread-hash")
    for grown in (0, 1):
        after = assignment(place_all(policy, workload(), with_new_replica(two_servers(), grown)))
        kept = [name for name in GOLDEN if after[name] == GOLDEN[name]]
        assert len(kept) >= 10, (grown, after)
    # The default re-deals nearly everything when mlserver-a grows (most free memory first).
    default_before = assignment(place_all(Policy(), workload(), two_servers()))
    default_after = assignment(place_all(Policy(), workload(), with_new_replica(two_servers(), 0)))
    assert sum(default_after[n] == default_before[n] for n in default_before) <= 6


def test_a_new_replica_takes_about_one_nth_and_only_moves_models_onto_itself() -> None:
    models = [model(f"model-{i}") for i in range(600)]
    policy = load_policy("spread-hash")
    before = assignment(place_all(policy, models, [server("a", [GiB] * 3), server("b", [GiB] * 3)]))
    after = assignment(place_all(policy, models, [server("a", [GiB] * 4), server("b", [GiB] * 3)]))
    moved = [name for name in before if after[name] != before[name]]
    assert {after[name] for name in moved} == {("a/3",)}
    assert 0.5 / 7 < len(moved) / len(models) < 1.5 / 7


def test_falls_back_to_the_next_ring_node_when_the_hashed_replica_is_full() -> None:
    servers = two_servers()
    nodes = [f"{s.name}/{r.idx}" for s in servers for r in s.replicas.values()]
    first, second = ring_order("iris", nodes)[:2]
    server_name, idx = first.split("/")
    full = next(s for s in servers if s.name == server_name).replicas[int(idx)]
    full.reservations["other_1"] = full.available_memory
    placed = load_policy("spread-hash").place(model("iris", memory=GiB), servers)
    assert isinstance(placed, Placement)
    assert f"{placed.server}/{placed.replicas[0]}" == second


def test_never_moves_a_loaded_model() -> None:
    version = model("iris", memory=GiB)  # hashes to mlserver-b/0
    version.server = "mlserver-a"
    version.set_replica(2, ReplicaState.Available)
    assert load_policy("spread-hash").place(version, two_servers()) == Placement("mlserver-a", (2,))


def test_keeps_the_default_filters() -> None:
    reason = load_policy("spread-hash").place(model("llm", memory=9 * GiB), two_servers())
    assert reason == Policy().place(model("llm", memory=9 * GiB), two_servers())
    pinned = load_policy("spread-hash").place(model("iris", pinned_to="mlserver-a"), two_servers())
    assert isinstance(pinned, Placement) and pinned.server == "mlserver-a"
