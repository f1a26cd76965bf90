"""The reload listener's gate (agent/reload.py): names are checked by full match and assignment,
requests are bounded and counted in flight; and Envoy's stats parsing (agent/inflight.py)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import structlog

from agent.debug import replica_status
from agent.inflight import parse_active
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
