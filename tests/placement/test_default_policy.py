"""The default ``seldon`` policy reproduces the reference rules (§4 of the reference digest)."""

from __future__ import annotations

import pytest

from scheduler.placement import Placement, PlacementFailure, PlacementPolicy, Policy, required_memory
from scheduler.policies import load_policy
from scheduler.state import ReplicaState
from tests.placement.fleet import (
    GiB,
    assignment,
    model,
    place_all,
    replicas_used,
    server,
    two_servers,
    workload,
)


def failure(result: Placement | PlacementFailure) -> str:
    assert isinstance(result, PlacementFailure), result
    return result.reason


def test_default_is_seldon_and_conforms() -> None:
    policy = load_policy("seldon")
    assert isinstance(policy, PlacementPolicy)
    assert policy == Policy()
    assert policy.name == "seldon"


def test_no_servers() -> None:
    reason = failure(Policy().place(model("iris"), []))
    assert reason == "no matching servers are available (no servers are registered)"


def test_capability_filter_skips_servers_lacking_requirements() -> None:
    servers = [server("mlserver", [GiB]), server("triton", [GiB], capabilities=("onnx", "gpu"))]
    assert Policy().place(model("resnet", requirements=("onnx",)), servers) == Placement("triton", (0,))
    reason = failure(Policy().place(model("llm", requirements=("vllm",)), servers))
    assert "server mlserver lacks capabilities ['vllm']" in reason
    assert "server triton lacks capabilities ['vllm']" in reason


def test_pinning_to_a_missing_server_names_it() -> None:
    reason = failure(Policy().place(model("iris", pinned_to="mlserver-gpu"), two_servers()))
    assert reason.startswith("no matching servers are available")
    assert "model is pinned to server mlserver-gpu" in reason


def test_pinning_picks_the_named_server_even_if_not_shared() -> None:
    servers = [server("mlserver-a", [GiB]), server("private", [GiB], shared=False)]
    assert Policy().place(model("iris", pinned_to="private"), servers) == Placement("private", (0,))
    assert Policy().place(model("iris"), servers[1:]) == PlacementFailure(
        "no matching servers are available (server private is not shared)"
    )


def test_server_scaled_to_zero_or_disconnected_is_skipped() -> None:
    gone, idle = server("gone", [GiB]), server("idle", [GiB])
    gone.expected_replicas = 0
    idle.replicas[0].connected = False
    reason = failure(Policy().place(model("iris"), [gone, idle]))
    assert "server gone is scaled to 0" in reason
    assert "server idle has no connected replicas" in reason


def test_min_replicas_allows_partial_placement() -> None:
    servers = [server("mlserver", [4 * GiB, 4 * GiB, GiB])]
    partial = model("mnist", memory=2 * GiB, replicas=3, min_replicas=2)
    assert Policy().place(partial, servers) == Placement("mlserver", (0, 1))
    reason = failure(Policy().place(model("mnist", memory=2 * GiB, replicas=3), servers))
    assert "server mlserver has 2 suitable replicas, model needs 3" in reason


def test_memory_reasons_say_what_is_free_and_needed() -> None:
    reason = failure(Policy().place(model("llm", memory=9 * GiB), two_servers()))
    assert reason.startswith("no matching server had enough suitable replicas")
    assert f"replica mlserver-a/0 has {8 * GiB} bytes free, model needs {9 * GiB}" in reason
    assert f"replica mlserver-b/2 has {2 * GiB} bytes free, model needs {9 * GiB}" in reason


def test_required_memory_counts_parallel_workers() -> None:
    version = model("iris", memory=GiB)
    version.spec.modelSpec.modelRuntimeInfo.mlserver.parallelWorkers = 3
    assert required_memory(version) == 3 * GiB
    reason = failure(Policy().place(version, [server("mlserver", [2 * GiB])]))
    assert f"replica mlserver/0 has {2 * GiB} bytes free, model needs {3 * GiB}" in reason


def test_reservations_count_against_free_memory() -> None:
    servers = [server("mlserver", [2 * GiB, 2 * GiB])]
    servers[0].replicas[0].reservations["other_1"] = GiB + 1
    assert Policy().place(model("iris", memory=GiB), servers) == Placement("mlserver", (1,))


def test_replica_order_loaded_then_most_free_then_lowest_index() -> None:
    servers = [server("mlserver", [GiB, 3 * GiB, 3 * GiB, 2 * GiB])]
    version = model("iris", replicas=2)
    assert Policy().place(version, servers) == Placement("mlserver", (1, 2))
    version.server = "mlserver"
    version.set_replica(3, ReplicaState.Available)
    assert Policy().place(version, servers) == Placement("mlserver", (3, 1))


def test_a_loaded_replica_is_kept_even_when_full() -> None:
    servers = [server("mlserver", [0, 4 * GiB])]
    version = model("iris", memory=GiB)
    version.server = "mlserver"
    version.set_replica(0, ReplicaState.Loaded)
    assert Policy().place(version, servers) == Placement("mlserver", (0,))


def test_current_server_first_then_registration_order() -> None:
    version = model("iris")
    assert Policy().place(version, two_servers()) == Placement("mlserver-a", (0,))
    version.server = "mlserver-b"
    assert Policy().place(version, two_servers()) == Placement("mlserver-b", (0,))


def test_fixed_workload_lands_on_the_first_server_most_free_replica_first() -> None:
    results = place_all(Policy(), workload(), two_servers())
    assert replicas_used(results) == {"mlserver-a/0", "mlserver-a/1", "mlserver-a/2"}
    assert assignment(results)["iris"] == ("mlserver-a/0",)
    assert assignment(results)["mnist"] == ("mlserver-a/0", "mlserver-a/1")


@pytest.mark.parametrize("name", ["seldon", "binpack", "spread-hash"])
def test_place_does_not_mutate_its_inputs(name: str) -> None:
    policy = load_policy(name)
    servers = two_servers()
    servers[0].replicas[1].reservations["other_1"] = GiB
    versions = workload()
    versions[0].set_replica(2, ReplicaState.Loaded)
    versions[0].server = "mlserver-a"

    def snapshot() -> str:
        return repr((servers, versions))  # dataclass reprs, down to the protos and reservations

    before = snapshot()
    for version in versions:
        policy.place(version, servers)
    assert snapshot() == before
