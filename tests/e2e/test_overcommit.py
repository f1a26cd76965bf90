"""Overcommit with LRU eviction and on-demand reload, on the real stack (scheduler, Envoy, MLServer,
agent): reference scenario 21, a hundred models on room for ten, and an agent restart that keeps
evicted models as evicted (decision 0014)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import grpc
import pytest

from apis.mlops.agent_debug import agent_debug_pb2 as debug_pb2
from apis.mlops.agent_debug import agent_debug_pb2_grpc as debug_grpc
from tests.e2e.conftest import Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_serving_path import grpc_infer, load

IRIS_BYTES = 1_000_000
InMemory = debug_pb2.ModelReplicaState.InMemory


@pytest.fixture(scope="module")
async def lru_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # Scenario 21: one MLServer replica, memory 10 MB, overcommit 20 %.
    config = stack_config(
        tmp_path_factory.mktemp("overcommit"), server_memory=10 * IRIS_BYTES, overcommit_percent=20
    )
    async with running_stack(config) as stack:
        yield stack


def agent_flag(stack: Stack, flag: str) -> str:
    argv = stack.supervisor.component("agent").argv
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}="))


async def replica_status(stack: Stack) -> debug_pb2.ReplicaStatusResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent_flag(stack, 'debug-port')}") as channel:
        reply: debug_pb2.ReplicaStatusResponse = await debug_grpc.AgentDebugServiceStub(
            channel
        ).ReplicaStatus(debug_pb2.ReplicaStatusRequest(), timeout=10)
        return reply


def in_memory(status: debug_pb2.ReplicaStatusResponse) -> set[str]:
    return {m.name for m in status.models if m.state == InMemory}


def evicted(status: debug_pb2.ReplicaStatusResponse) -> set[str]:
    return {m.name for m in status.models if m.state != InMemory}


async def cache_counts(stack: Stack) -> tuple[float, float]:
    url = f"http://127.0.0.1:{agent_flag(stack, 'metrics-port')}/metrics"
    async with stack.http.get(url) as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in ("seldon_cache_evict_count", "seldon_cache_miss_count"):
            values[name] = float(line.rsplit(" ", 1)[1])
    return values["seldon_cache_evict_count"], values["seldon_cache_miss_count"]


async def load_all(stack: Stack, names: list[str]) -> None:
    for name in names:
        await load(stack, iris_model(name, memoryBytes=IRIS_BYTES))
    for name in names:
        await stack.wait_state(name, "ModelAvailable", timeout=120)


async def test_scenario_21_eleven_models_on_room_for_ten(lru_stack: Stack) -> None:
    stack = lru_stack
    names = [f"iris{n}" for n in range(1, 12)]
    await load_all(stack, names)
    status = await replica_status(stack)
    assert len(in_memory(status)) == 10 and len(evicted(status)) == 1, status
    assert status.availableMemoryBytes == 12 * IRIS_BYTES - 11 * IRIS_BYTES
    evictions, misses = await cache_counts(stack)
    assert evictions >= 1
    for name in names:  # REST: each answers, the evicted one after a reload
        assert (await stack.infer(name, path_model=name)).status == 200, name
    for name in names:  # gRPC: the same, now evicting the models REST touched least recently
        reply = await grpc_infer(stack, name)
        assert reply.model_name == f"{name}_1" and reply.outputs, name
    status = await replica_status(stack)
    assert len(in_memory(status)) == 10 and len(evicted(status)) == 1
    after_evictions, after_misses = await cache_counts(stack)
    assert after_evictions > evictions and after_misses > misses


async def test_a_restarted_agent_adopts_evicted_models_as_evicted(lru_stack: Stack) -> None:
    stack = lru_stack
    await load_all(stack, [f"iris{n}" for n in range(1, 12)])
    loaded = await replica_status(stack)
    (first,) = evicted(loaded)
    # Reload that one (another model is evicted for it): the evicted set is now one no fresh load
    # in load order would reproduce, so only adoption can give it back after the restart.
    reloaded = first.rpartition("_")[0]
    assert (await stack.infer(reloaded, path_model=reloaded)).status == 200
    before = await replica_status(stack)
    assert len(evicted(before)) == 1 and evicted(before) != evicted(loaded)
    old = stack.supervisor.pid("agent")
    os.kill(old, signal.SIGKILL)

    async def restarted() -> bool:
        if not stack.supervisor.running("agent") or stack.supervisor.pid("agent") == old:
            return False
        try:
            return len((await replica_status(stack)).models) == 11
        except grpc.aio.AioRpcError:
            return False

    await eventually(restarted, timeout=90, what="the agent to restart")
    after = await replica_status(stack)
    assert evicted(after) == evicted(before) and in_memory(after) == in_memory(before)
    (gone,) = evicted(after)
    model = gone.rpartition("_")[0]
    await stack.wait_state(model, "ModelAvailable", timeout=60)
    assert (await stack.infer(model, path_model=model)).status == 200
    assert gone in in_memory(await replica_status(stack))


SLOW_MODEL = """
import asyncio

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Slow(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await asyncio.sleep(float(NumpyCodec.decode_input(payload.inputs[0]).flat[0]))
        return InferenceResponse(model_name=self.name, outputs=[])
"""


@pytest.fixture(scope="module")
async def small_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # Room for two iris-sized models, assignments for four.
    config = stack_config(
        tmp_path_factory.mktemp("overcommit-small"), server_memory=2 * IRIS_BYTES, overcommit_percent=100
    )
    async with running_stack(config) as stack:
        yield stack


async def test_a_model_with_a_request_in_flight_is_not_evicted(
    small_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    stack = small_stack
    artifact = tmp_path_factory.mktemp("slow-model")
    (artifact / "slow.py").write_text(SLOW_MODEL)
    slow = iris_model("slow", uri=f"file://{artifact}", memoryBytes=IRIS_BYTES)
    del slow.modelSpec.requirements[:]
    slow.modelSpec.requirements.append("python")
    await load(stack, slow)
    await stack.wait_state("slow", "ModelAvailable")
    await load_all(stack, ["fast"])  # now full: slow is the least recently used
    body = {"inputs": [{"name": "seconds", "shape": [1], "datatype": "FP32", "data": [4.0]}]}

    async def slow_call() -> int:
        async with stack.http.post(f"{stack.url}/v2/models/slow/infer", json=body) as response:
            return response.status

    call = asyncio.create_task(slow_call())
    await eventually(lambda: envoy_active(stack, "slow_1_http"), what="the slow request to be in flight")
    # On an overcommitting replica a version keeps clusters of its own: the agent's exact gauge.
    assert await envoy_has_cluster(stack, "slow_1_http")
    await load_all(stack, ["third"])  # needs room: the least recently used model is busy
    status = await replica_status(stack)
    assert "slow_1" in in_memory(status) and evicted(status) == {"fast_1"}, status
    assert await call == 200


async def envoy_active(stack: Stack, route: str) -> bool:
    """Whether Envoy has sent a request on ``route`` (its stat_prefix) that has not completed."""
    prefix = f"vhost.seldon_service.route.{route}.upstream_rq_"
    text = await envoy_stats(stack, "^" + prefix.replace(".", "\\.") + "(total|completed)$")
    counts = dict(line.split(": ") for line in text.strip().splitlines())
    return int(counts.get(prefix + "total", 0)) - int(counts.get(prefix + "completed", 0)) == 1


async def envoy_has_cluster(stack: Stack, cluster: str) -> bool:
    return bool((await envoy_stats(stack, f"^cluster\\.{cluster}\\.upstream_rq_active$")).strip())


async def envoy_stats(stack: Stack, pattern: str) -> str:
    url = f"http://127.0.0.1:{stack.config.envoy_admin_port}/stats"
    async with stack.http.get(url, params={"filter": pattern}) as response:
        return await response.text()


async def test_a_hundred_models_on_room_for_ten(tmp_path_factory: pytest.TempPathFactory) -> None:
    config = stack_config(
        tmp_path_factory.mktemp("overcommit-100"), server_memory=10 * IRIS_BYTES, overcommit_percent=900
    )
    names = [f"m{n}" for n in range(100)]
    async with running_stack(config) as stack:
        await load_all(stack, names)
        status = await replica_status(stack)
        assert len(in_memory(status)) == 10 and len(evicted(status)) == 90
        evictions, misses = await cache_counts(stack)
        for _ in range(2):
            for name in names:
                assert (await stack.infer(name, path_model=name)).status == 200, name
        after_evictions, after_misses = await cache_counts(stack)
        # Calling 100 models in turn with room for 10 finds each evicted: a miss and an eviction each.
        assert after_misses - misses >= 190 and after_evictions - evictions >= 190
        assert len(in_memory(await replica_status(stack))) == 10
