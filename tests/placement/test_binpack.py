"""``binpack`` packs models onto already-used replicas, leaving empty ones to scale away."""

from __future__ import annotations

from scheduler.placement import Placement, Policy
from scheduler.policies import load_policy
from scheduler.state import ReplicaState, Server
from tests.placement.fleet import GiB, assignment, model, place_all, server, two_servers, workload


def in_use(servers: list[Server]) -> set[str]:
    """Replicas holding anything: memory used before the workload or reserved by it."""
    return {
        f"{s.name}/{r.idx}"
        for s in servers
        for r in s.replicas.values()
        if r.free_memory < r.config.memoryBytes
    }


def test_fixed_workload_uses_fewer_replicas_than_the_default() -> None:
    default_fleet, binpack_fleet = two_servers(), two_servers()
    default = place_all(Policy(), workload(), default_fleet)
    packed = place_all(load_policy("binpack"), workload(), binpack_fleet)

    assert all(isinstance(p, Placement) for p in packed.values())
    assert assignment(packed) != assignment(default)
    # mlserver-a/0 starts empty: the default fills it first (most free), binpack never touches it.
    assert in_use(default_fleet) == {f"mlserver-{s}/{i}" for s in "ab" for i in range(3)}
    assert in_use(binpack_fleet) == in_use(default_fleet) - {"mlserver-a/0"}
    # ... so a whole replica's worth of memory stays free in one piece for a big model.
    assert max(r.free_memory for s in binpack_fleet for r in s.replicas.values()) == 8 * GiB
    assert max(r.free_memory for s in default_fleet for r in s.replicas.values()) < 8 * GiB


def test_tightest_replica_that_fits_comes_first() -> None:
    servers = [server("mlserver", [8 * GiB, 2 * GiB, GiB, 3 * GiB], capacity=8 * GiB)]
    policy = load_policy("binpack")
    assert policy.place(model("iris", memory=GiB), servers) == Placement("mlserver", (2,))
    assert policy.place(model("iris", memory=2 * GiB), servers) == Placement("mlserver", (1,))
    assert policy.place(model("mnist", memory=2 * GiB, replicas=2), servers) == Placement("mlserver", (1, 3))


def test_fullest_server_comes_first() -> None:
    servers = [server("roomy", [8 * GiB, 8 * GiB]), server("busy", [8 * GiB, GiB])]
    assert load_policy("binpack").place(model("iris", memory=GiB), servers) == Placement("busy", (1,))
    # A server without enough suitable replicas is not preferred, however full.
    assert load_policy("binpack").place(model("mnist", memory=2 * GiB, replicas=2), servers) == Placement(
        "roomy", (0, 1)
    )


def test_never_moves_a_loaded_model_to_pack_tighter() -> None:
    servers = [server("roomy", [8 * GiB]), server("busy", [GiB])]
    version = model("iris", memory=GiB)
    version.server = "roomy"
    version.set_replica(0, ReplicaState.Available)
    assert load_policy("binpack").place(version, servers) == Placement("roomy", (0,))


def test_keeps_the_default_filters() -> None:
    servers = [server("mlserver", [GiB])]
    binpack = load_policy("binpack")
    assert binpack.place(model("llm", memory=2 * GiB), servers) == Policy().place(
        model("llm", memory=2 * GiB), servers
    )
    assert binpack.place(model("iris", pinned_to="triton"), servers) == Policy().place(
        model("iris", pinned_to="triton"), servers
    )
    assert binpack.place(model("x", requirements=("gpu",)), servers) == Policy().place(
        model("x", requirements=("gpu",)), servers
    )
