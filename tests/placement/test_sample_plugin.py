"""The example plug-in (samples/placement_plugin), used directly as a policy object."""

from __future__ import annotations

from samples.placement_plugin.meshserve_least_loaded import least_loaded, load
from scheduler.placement import Placement, PlacementPolicy, Policy
from scheduler.state import ReplicaState
from tests.placement.fleet import GiB, model, place_all, server


def test_is_a_placement_policy() -> None:
    policy = least_loaded()
    assert isinstance(policy, PlacementPolicy)
    assert policy.name == "least-loaded"


def test_prefers_the_least_used_replica_over_the_most_free_bytes() -> None:
    servers = [server("mlserver", [8 * GiB, 4 * GiB], capacity=16 * GiB)]
    servers[0].replicas[1].config.memoryBytes = 4 * GiB  # a small replica, but empty
    assert load(servers[0].replicas[0]) == (0, 0.5)
    assert load(servers[0].replicas[1]) == (0, 0.0)
    assert Policy().place(model("iris", memory=GiB), servers) == Placement("mlserver", (0,))
    assert least_loaded().place(model("iris", memory=GiB), servers) == Placement("mlserver", (1,))


def test_loads_in_flight_count_first() -> None:
    servers = [server("mlserver", [4 * GiB, 4 * GiB, 4 * GiB], capacity=4 * GiB)]
    servers[0].replicas[0].reservations["a_1"] = 0
    servers[0].replicas[1].reservations["b_1"] = 0
    assert least_loaded().place(model("iris"), servers) == Placement("mlserver", (2,))


def test_spreads_a_workload_evenly() -> None:
    servers = [server("mlserver", [8 * GiB] * 4, capacity=8 * GiB)]
    place_all(least_loaded(), [model(f"m{i}", memory=GiB) for i in range(8)], servers)
    assert [len(r.reservations) for r in servers[0].replicas.values()] == [2, 2, 2, 2]


def test_keeps_a_loaded_model_where_it_is() -> None:
    servers = [server("mlserver", [GiB, 8 * GiB], capacity=8 * GiB)]
    version = model("iris", memory=GiB)
    version.server = "mlserver"
    version.set_replica(0, ReplicaState.Loaded)
    assert least_loaded().place(version, servers) == Placement("mlserver", (0,))
