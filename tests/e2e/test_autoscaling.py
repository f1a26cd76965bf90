"""Model autoscaling through the real stack: Envoy's load reports drive the scheduler (scenario 44).

A model that takes a fixed time per request (so the requests in flight follow the client's
concurrency, not the machine's load) gets sustained concurrent load through Envoy, REST and gRPC:
it grows from 1 to 3 replicas, one at a time, with its spec left at ``replicas: 1``; once the load
stops it shrinks back to 1. The server is a parameter: one declared with 3 replicas, and one with
``minReplicas: 1, maxReplicas: 4`` starting at 1, which grows to host the model's replicas (server
autoscaling asks, the local controller starts them) and releases the emptied ones after its grace
period, under light traffic. Every request is counted; none may fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import Stack, eventually, running_stack, stack_config
from tests.e2e.test_scheduling import declare, expected_replicas, running_replicas, server_yaml
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import traffic

pytestmark = pytest.mark.timeout(480)

ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState
MODEL = "slowpoke"
SERVICE_S = 0.1  # each request's time inside the model
CLIENTS = 6  # per protocol: 12 in flight, then 6 per replica at 2 replicas, always above THRESHOLD
THRESHOLD = 3  # in flight per replica
GRACE_S = 3.0  # the server's scale-down grace
# Generous: up to two server replicas started (MLServer, agent) and three model loads on a busy
# 2-core machine.
SCALED_WITHIN_S = 240.0
BACK_WITHIN_S = 120.0

SLOW_MODEL = '''
import asyncio

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class SlowModel(MLModel):
    """Echoes its input after a fixed delay (awaited, so requests overlap)."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await asyncio.sleep(DELAY)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("echo", NumpyCodec.decode_input(payload.inputs[0]))],
        )
'''


def slow_artifact(root: Path) -> Path:
    artifact = root / "slowpoke"
    artifact.mkdir(parents=True)
    (artifact / "slow_runtime.py").write_text(f"DELAY = {SERVICE_S!r}\n{SLOW_MODEL}")
    return artifact


def autoscaled_model(
    artifact: Path, name: str = MODEL, deployment: scheduler_pb2.DeploymentSpec | None = None
) -> scheduler_pb2.Model:
    return scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name=name),
        modelSpec=scheduler_pb2.ModelSpec(
            uri=f"file://{artifact}", requirements=["python"], memoryBytes=1000
        ),
        deploymentSpec=deployment or scheduler_pb2.DeploymentSpec(replicas=1, minReplicas=1, maxReplicas=3),
    )


@dataclass(frozen=True)
class ServerShape:
    """The server the model runs on: its declared replicas and, when autoscaled, its bounds."""

    replicas: int
    min_replicas: int = 0
    max_replicas: int = 0

    def manifest(self, name: str) -> str:
        bounds = {"minReplicas": self.min_replicas, "maxReplicas": self.max_replicas}
        return server_yaml(name, replicas=self.replicas, **{k: v for k, v in bounds.items() if v})


async def declare_server(stack: Stack, folder: Path, shape: ServerShape) -> None:
    """Declare the stack's server with ``shape`` and wait until exactly its replicas run."""
    server = stack.config.server_name
    manifest = folder / "server.yaml"
    manifest.write_text(shape.manifest(server))
    await declare(stack, manifest, server)
    await eventually(
        lambda: _async(running_replicas(stack, server) == set(range(shape.replicas))),
        timeout=90,
        what=f"{shape.replicas} replicas of {server}",
    )


async def replicas(stack: Stack, model: str = MODEL) -> tuple[int, int, int]:
    """(Available replicas, replicas placed, the spec's replicas) of the model's latest version;
    placed counts every replica the status lists that is not unloaded yet."""
    status = await stack.model_status(model)
    assert status is not None
    latest = status.versions[-1]
    placed = [r for r in latest.modelReplicaState.values() if r.state != ReplicaState.Unloaded]
    return latest.state.availableReplicas, len(placed), latest.modelDefn.deploymentSpec.replicas


@pytest.fixture(scope="module")
async def autoscaling_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("autoscaling")
    config = stack_config(
        home,
        enable_model_autoscaling=True,
        model_lag_threshold=THRESHOLD,
        model_scale_up_seconds=2.0,
        model_idle_seconds=4.0,
        model_scaling_cooldown_seconds=2.0,
        server_scale_down_grace_seconds=GRACE_S,
    )
    async with running_stack(config) as stack:
        yield stack


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(ServerShape(3), id="server-with-3-replicas"),
        pytest.param(ServerShape(1, min_replicas=1, max_replicas=4), id="server-grows-from-1-to-host-them"),
    ],
)
async def test_sustained_load_scales_a_model_up_to_max_and_idleness_back_to_min(
    autoscaling_stack: Stack, tmp_path: Path, shape: ServerShape
) -> None:
    stack, server = autoscaling_stack, autoscaling_stack.config.server_name
    await declare_server(stack, tmp_path, shape)
    await load(stack, autoscaled_model(slow_artifact(tmp_path)))
    try:
        await stack.wait_state(MODEL, "ModelAvailable", timeout=90)
        assert await replicas(stack) == (1, 1, 1)
        seen: list[int] = []
        servers_seen: list[int] = []

        async def at_max() -> bool:
            available, _, spec = await replicas(stack)
            assert spec == 1, "the user's spec is never changed"
            if not seen or seen[-1] != available:
                seen.append(available)
            expected = await expected_replicas(stack, server)
            if not servers_seen or servers_seen[-1] != expected:
                servers_seen.append(expected)
            return available == 3

        started = time.monotonic()
        async with traffic(stack, [MODEL], rate_per_stream=None, clients_per_stream=CLIENTS) as heavy:
            await eventually(at_max, timeout=SCALED_WITHIN_S, what="3 Available replicas under load")
            grown_s = time.monotonic() - started
            # The server hosts one model replica per server replica: at least 3 run.
            assert await expected_replicas(stack, server) == max(3, shape.replicas)
            assert running_replicas(stack, server) >= {0, 1, 2}
            await asyncio.sleep(3)  # at max: held load adds nothing more, to the model or the server
            assert (await replicas(stack))[:2] == (3, 3)
            assert await expected_replicas(stack, server) == max(3, shape.replicas)
        heavy.figure(f"autoscaling ({shape}): 1 -> 3 replicas in {grown_s:.1f} s under load")
        assert seen == [1, 2, 3], f"one replica at a time: {seen}"
        assert servers_seen == sorted(servers_seen), f"the server only grew under load: {servers_seen}"
        assert heavy.failed == 0, f"{heavy.failed} of {heavy.ok + heavy.failed} failed: {heavy.failures[:5]}"
        assert heavy.ok > 2 * CLIENTS * 10

        idle_from = time.monotonic()

        async def model_at_min() -> bool:
            return await replicas(stack) == (1, 1, 1)

        async def server_back() -> bool:
            return await expected_replicas(stack, server) == shape.replicas and running_replicas(
                stack, server
            ) == set(range(shape.replicas))

        await eventually(model_at_min, timeout=BACK_WITHIN_S, what="the model back to 1 replica once idle")
        model_back_s = time.monotonic() - idle_from
        # Light traffic (below the threshold) from here on: the server releases what is left of its
        # emptied replicas while the model is served, and the model stays at 1.
        async with traffic(stack, [MODEL], rate_per_stream=8.0) as light:
            await eventually(server_back, timeout=BACK_WITHIN_S, what=f"the server back to {shape.replicas}")
            server_back_s = time.monotonic() - idle_from
            await eventually(lambda: _async(light.ok >= 20), timeout=30, what="requests after scale-down")
            assert await replicas(stack) == (1, 1, 1)
        light.figure(
            f"autoscaling ({shape}): model back to 1 in {model_back_s:.1f} s, "
            f"server back to {shape.replicas} in {server_back_s:.1f} s after the load stopped"
        )
        assert light.failed == 0, light.failures[:5]
        print(
            f"autoscaling ({shape}): {heavy.ok + light.ok} requests, {heavy.failed + light.failed} failed; "
            f"replicas seen {seen}, server replicas seen {servers_seen}"
        )
    finally:
        await unload(stack, MODEL)
        await stack.wait_gone(MODEL, timeout=60)


async def test_a_model_with_only_replicas_keeps_them_under_load(
    autoscaling_stack: Stack, tmp_path: Path
) -> None:
    """Scenario 45: the same load on a model that sets only ``replicas: 2`` changes nothing."""
    stack, name = autoscaling_stack, "fixed"
    await declare_server(stack, tmp_path, ServerShape(2))
    fixed = autoscaled_model(slow_artifact(tmp_path), name, scheduler_pb2.DeploymentSpec(replicas=2))
    await load(stack, fixed)
    try:
        await stack.wait_state(name, "ModelAvailable", timeout=90)
        async with traffic(stack, [name], rate_per_stream=None, clients_per_stream=CLIENTS) as calls:
            for _ in range(8):  # four scale-up windows and cooldowns
                await asyncio.sleep(1)
                assert await replicas(stack, name) == (2, 2, 2)
        assert calls.failed == 0 and calls.ok > 2 * CLIENTS * 10, (calls.ok, calls.failures[:5])
    finally:
        await unload(stack, name)
        await stack.wait_gone(name, timeout=60)


async def _async(value: bool) -> bool:
    return value
