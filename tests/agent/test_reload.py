"""The reload listener's gate (agent/reload.py): names are checked by full match and assignment,
requests are bounded and counted in flight; and Envoy's stats parsing (agent/inflight.py)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import structlog

from agent.debug import replica_status
from agent.inflight import host_active, in_flight, parse_active, parse_routes
from agent.locks import ModelLocks
from agent.mlserver import MLServerClient
from agent.reload import ReloadGate, Unavailable, is_versioned_name
from agent.residency import NotAssigned, Residency
from agent.state import ReplicaState
from apis.mlops.agent_debug import agent_debug_pb2 as debug_pb2
from tests.agent.agent_protos import model_version
from tests.agent.test_residency import FakeMLServer


def gate(max_in_flight: int = 4) -> tuple[ReloadGate, ReplicaState]:
    state = ReplicaState(memory_bytes=2, overcommit_percentage=100)
    residency = Residency(
        mlserver=cast(MLServerClient, FakeMLServer()),
        state=state,
        locks=ModelLocks(),
        busy=set(),
        logger=structlog.get_logger(),
    )
    state.add(model_version("iris", 1, "x", memory_bytes=1))
    return ReloadGate(residency, max_in_flight=max_in_flight, logger=structlog.get_logger()), state


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("iris_1", True),
        ("a-b_12", True),
        ("iris", False),
        ("Iris_1", False),
        ("../x_1", False),
        ("iris_1/x", False),
    ],
)
def test_only_versioned_names_match(name: str, valid: bool) -> None:
    assert is_versioned_name(name) is valid


async def test_an_unassigned_or_malformed_name_is_not_forwarded() -> None:
    reload_gate, _ = gate()
    forwarded: list[str] = []

    async def forward() -> str:
        forwarded.append("x")
        return "ok"

    for name in ("iris_2", "iris", "../../etc_1"):
        with pytest.raises(NotAssigned):
            await reload_gate.run(name, forward)
    assert forwarded == []
    assert await reload_gate.run("iris_1", forward) == "ok"


async def test_requests_beyond_the_bound_are_refused_and_counted_in_flight_meanwhile() -> None:
    reload_gate, _ = gate(max_in_flight=2)
    release = asyncio.Event()

    async def forward() -> str:
        await release.wait()
        return "ok"

    held = [asyncio.create_task(reload_gate.run("iris_1", forward)) for _ in range(2)]
    await asyncio.sleep(0)
    assert await reload_gate.active() == {"iris_1": 2}
    with pytest.raises(Unavailable, match="limit of 2"):
        await reload_gate.run("iris_1", forward)
    release.set()
    assert await asyncio.gather(*held) == ["ok", "ok"]
    assert await reload_gate.active() == {}


def test_envoy_active_requests_are_summed_per_model_version() -> None:
    text = (
        "cluster.iris_1_http.upstream_rq_active: 2\n"
        "cluster.iris_1_grpc.upstream_rq_active: 1\n"
        "cluster.meshserve_xds.upstream_rq_active: 1\n"
        "cluster.other_3_http.upstream_rq_active: 0\n"
    )
    assert parse_active(text) == {"iris_1": 3, "other_3": 0}  # not a model cluster: left out


ROUTE_STATS = (
    "vhost.seldon_service.route.iris_1_http.upstream_rq_completed: 5\n"
    "vhost.seldon_service.route.iris_1_http.upstream_rq_total: 7\n"
    "vhost.seldon_service.route.iris_1_grpc.upstream_rq_total: 1\n"
    "vhost.seldon_service.route.idle_2_http.upstream_rq_completed: 4\n"
    "vhost.seldon_service.route.idle_2_http.upstream_rq_total: 4\n"
    "cluster.own_1_http.upstream_rq_active: 1\n"
    "vhost.seldon_service.route.own_1_http.upstream_rq_total: 9\n"
)


def clusters_text(active: int, host: str = "10.0.0.1") -> str:
    return (
        f"replicas_h00ff_http::{host}:8080::cx_active::1\n"
        f"replicas_h00ff_http::{host}:8080::rq_active::{active}\n"
        "replicas_h00ff_grpc::10.0.0.2:9500::rq_active::3\n"  # another replica's
        "meshserve_xds::127.0.0.1:9004::rq_active::1\n"
    )


def test_routes_sent_minus_completed_never_goes_below_zero() -> None:
    assert parse_routes(ROUTE_STATS) == {"iris_1": 3, "idle_2": 0, "own_1": 9}
    assert parse_routes("vhost.seldon_service.route.x_1_http.upstream_rq_completed: 2\n") == {"x_1": 0}


def test_a_busy_replica_reads_its_shared_versions_from_their_routes_and_own_ones_exactly() -> None:
    counts = in_flight(ROUTE_STATS, clusters_text(active=2), "10.0.0.1", (8080, 9500))
    assert counts == {"iris_1": 3, "idle_2": 0, "own_1": 1}


def test_an_idle_replica_has_nothing_in_flight_whatever_its_routes_leaked() -> None:
    # iris_1's routes say 3 (an abandoned request never completes), but no request is open here.
    assert in_flight(ROUTE_STATS, clusters_text(active=0), "10.0.0.1", (8080, 9500)) == {"own_1": 1}


def test_a_replica_envoy_does_not_list_by_address_is_never_taken_for_idle() -> None:
    assert host_active(clusters_text(active=0, host="mlserver-0.svc"), "10.0.0.1", (8080,)) is None
    counts = in_flight(ROUTE_STATS, clusters_text(active=0, host="mlserver-0.svc"), "10.0.0.1", (8080,))
    assert counts["iris_1"] == 3


def test_replica_status_lists_in_memory_and_evicted_models() -> None:
    _, state = gate()
    state.add(model_version("old", 2, "x", memory_bytes=1), resident=False)
    status = replica_status(state)
    states = {m.name: m.state for m in status.models}
    assert states == {
        "iris_1": debug_pb2.ModelReplicaState.InMemory,
        "old_2": debug_pb2.ModelReplicaState.Evicted,
    }
    assert status.availableMemoryBytes == 2 and all(m.lastAccessed.seconds > 0 for m in status.models)
