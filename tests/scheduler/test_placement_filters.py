from __future__ import annotations

from apis.mlops.agent import agent_pb2
from scheduler.placement import Placement, PlacementFailure, Policy, required_memory
from scheduler.state import ModelVersion, ReplicaState, Server, ServerReplica
from tests.scheduler.fakes import MEMORY, model


def version(
    *,
    replicas: int = 1,
    min_replicas: int = 0,
    memory: int = 0,
    requirements: tuple[str, ...] = ("sklearn",),
    server: str | None = None,
) -> ModelVersion:
    spec = model(
        "iris",
        replicas=replicas,
        min_replicas=min_replicas,
        memory=memory,
        requirements=requirements,
        server=server,
    )
    return ModelVersion(1, spec)


def server(
    name: str,
    *memories: int,
    shared: bool = True,
    capabilities: tuple[str, ...] = ("sklearn",),
    connected: bool = True,
) -> Server:
    config = agent_pb2.ReplicaConfig(capabilities=list(capabilities))
    replicas = {
        idx: ServerReplica(name, idx, config, available_memory=mem, connected=connected)
        for idx, mem in enumerate(memories or (MEMORY,))
    }
    return Server(name, replicas, shared=shared)


def reason(result: Placement | PlacementFailure) -> str:
    assert isinstance(result, PlacementFailure), f"expected a failure, got {result}"
    return result.reason


def test_no_servers_is_a_failure_that_says_so() -> None:
    assert reason(Policy().place(version(), [])) == (
        "no matching servers are available (no servers are registered)"
    )


def test_model_is_placed_on_a_matching_server() -> None:
    assert Policy().place(version(), [server("s")]) == Placement("s", (0,))


def test_missing_capabilities_are_named() -> None:
    result = Policy().place(version(requirements=("sklearn", "gpu")), [server("s")])
    assert "server s lacks capabilities ['gpu']" in reason(result)


def test_server_without_connected_replicas_is_skipped() -> None:
    result = Policy().place(version(), [server("s", connected=False)])
    assert "server s has no connected replicas" in reason(result)


def test_server_scaled_to_zero_is_skipped() -> None:
    scaled = server("s")
    scaled.expected_replicas = 0
    assert "server s is scaled to 0" in reason(Policy().place(version(), [scaled]))


def test_dedicated_server_takes_only_models_pinned_to_it() -> None:
    dedicated = server("dedicated", shared=False)
    assert "server dedicated is not shared" in reason(Policy().place(version(), [dedicated]))
    pinned = version(server="dedicated")
    assert Policy().place(pinned, [server("shared"), dedicated]) == Placement("dedicated", (0,))


def test_pinned_model_refuses_other_servers() -> None:
    result = Policy().place(version(server="gpu"), [server("cpu")])
    assert "model is pinned to server gpu" in reason(result)


def test_replica_without_enough_free_memory_is_rejected() -> None:
    full = server("s", 100)
    full.replicas[0].reservations["other_1"] = 50
    result = Policy().place(version(memory=60), [full])
    assert "replica s/0 has 50 bytes free, model needs 60" in reason(result)


def test_parallel_workers_multiply_the_memory_needed() -> None:
    workers = version(memory=10)
    workers.spec.modelSpec.modelRuntimeInfo.mlserver.parallelWorkers = 3
    assert required_memory(workers) == 30
    assert "model needs 30" in reason(Policy().place(workers, [server("s", 25)]))


def test_replica_already_holding_the_version_passes_the_memory_check() -> None:
    loaded = version(memory=60)
    loaded.set_replica(0, ReplicaState.Available)
    assert Policy().place(loaded, [server("s", 0)]) == Placement("s", (0,))


def test_replicas_prefer_loaded_then_most_free_memory_then_lowest_index() -> None:
    candidate = version(replicas=3)
    candidate.set_replica(3, ReplicaState.Loaded)
    placed = Policy().place(candidate, [server("s", 100, 500, 500, 10, 900)])
    assert placed == Placement("s", (3, 4, 1))


def test_not_enough_replicas_fails_with_the_count() -> None:
    result = Policy().place(version(replicas=3), [server("s", MEMORY, MEMORY)])
    assert "server s has 2 suitable replicas, model needs 3" in reason(result)


def test_min_replicas_allows_a_partial_placement() -> None:
    partial = version(replicas=3, min_replicas=2)
    assert Policy().place(partial, [server("s", MEMORY, MEMORY)]) == Placement("s", (0, 1))


def test_full_placement_on_another_server_beats_a_partial_one() -> None:
    partial = version(replicas=3, min_replicas=2)
    servers = [server("small", MEMORY, MEMORY), server("big", MEMORY, MEMORY, MEMORY)]
    assert Policy().place(partial, servers) == Placement("big", (0, 1, 2))


def test_current_server_is_preferred() -> None:
    current = version()
    current.server = "b"
    assert Policy().place(current, [server("a"), server("b")]) == Placement("b", (0,))


def test_first_server_with_enough_replicas_wins() -> None:
    result = Policy().place(version(replicas=2), [server("one"), server("two", MEMORY, MEMORY)])
    assert result == Placement("two", (0, 1))
