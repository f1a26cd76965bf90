"""Model autoscaling through the real stack: Envoy's load reports drive the scheduler (scenario 44).

A model that takes a fixed time per request (so the requests in flight follow the client's
concurrency, not the machine's load) gets sustained concurrent load through Envoy: it grows from 1
to 3 replicas on a server that has 3, one at a time, with its spec left at ``replicas: 1``; once
the load stops it shrinks back to 1. Every request is counted; none may fail. The server's replica
count is a parameter so the same test can run on a server that grows to host the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import IRIS_IN, Stack, eventually, running_stack, stack_config
from tests.e2e.test_scheduling import declare, server_yaml
from tests.e2e.test_serving_path import load, unload

pytestmark = pytest.mark.timeout(300)

ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState
MODEL = "slowpoke"
SERVICE_S = 0.1  # each request's time inside the model
CLIENTS = 12  # concurrent requests: 12, then 6 per replica at 2 replicas, always above THRESHOLD
THRESHOLD = 3  # in flight per replica
SCALED_WITHIN_S = 120.0  # generous: three MLServer model loads on a busy 2-core machine

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


@dataclass
class Load:
    """Closed-loop clients through Envoy; every request is counted, every failure kept."""

    stack: Stack
    model: str = MODEL
    ok: int = 0
    failures: list[str] = field(default_factory=list)

    async def client(self, stop: asyncio.Event) -> None:
        url = f"{self.stack.url}/v2/models/{self.model}/infer"
        timeout = aiohttp.ClientTimeout(total=10)
        while not stop.is_set():
            try:
                async with self.stack.http.post(
                    url, json=IRIS_IN, headers={"seldon-model": self.model}, timeout=timeout
                ) as response:
                    body = await response.read()
                    if response.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{response.status} {body[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as error:
                self.failures.append(repr(error))

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


@contextlib.asynccontextmanager
async def running(load: Load, clients: int) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(load.client(stop)) for _ in range(clients)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


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
    )
    async with running_stack(config) as stack:
        yield stack


@pytest.mark.parametrize("server_replicas", [3])
async def test_sustained_load_scales_a_model_up_to_max_and_idleness_back_to_min(
    autoscaling_stack: Stack, tmp_path: Path, server_replicas: int
) -> None:
    stack = autoscaling_stack
    manifest = tmp_path / "server.yaml"
    manifest.write_text(server_yaml(stack.config.server_name, replicas=server_replicas))
    await declare(stack, manifest, stack.config.server_name)
    await load(stack, autoscaled_model(slow_artifact(tmp_path)))
    try:
        await stack.wait_state(MODEL, "ModelAvailable", timeout=90)
        assert await replicas(stack) == (1, 1, 1)
        traffic = Load(stack)
        seen: list[int] = []

        async def at_max() -> bool:
            available, _, spec = await replicas(stack)
            assert spec == 1, "the user's spec is never changed"
            if not seen or seen[-1] != available:
                seen.append(available)
            return available == 3

        started = time.monotonic()
        async with running(traffic, CLIENTS):
            await eventually(at_max, timeout=SCALED_WITHIN_S, what="3 Available replicas under load")
            grown_s = time.monotonic() - started
            await asyncio.sleep(3)  # at max: held load adds nothing more
            assert (await replicas(stack))[:2] == (3, 3)
        print(f"autoscaling: 1 -> 3 replicas in {grown_s:.1f} s under load; {traffic.total} requests")
        assert seen == [1, 2, 3], f"one replica at a time: {seen}"
        assert traffic.failures == [], (
            f"{len(traffic.failures)} of {traffic.total} failed: {traffic.failures[:5]}"
        )
        assert traffic.ok > CLIENTS * 10

        async def back_to_min() -> bool:
            return await replicas(stack) == (1, 1, 1)

        await eventually(back_to_min, timeout=60, what="back to 1 replica once idle")
        after = Load(stack)
        async with running(after, 2):
            await eventually(lambda: _async(after.total >= 20), timeout=30, what="requests after scale-down")
        assert after.failures == [], after.failures[:5]
    finally:
        await unload(stack, MODEL)
        await stack.wait_gone(MODEL, timeout=60)


async def test_a_model_with_only_replicas_keeps_them_under_load(
    autoscaling_stack: Stack, tmp_path: Path
) -> None:
    """Scenario 45: the same load on a model that sets only ``replicas: 2`` changes nothing."""
    stack, name = autoscaling_stack, "fixed"
    fixed = autoscaled_model(slow_artifact(tmp_path), name, scheduler_pb2.DeploymentSpec(replicas=2))
    await load(stack, fixed)
    try:
        await stack.wait_state(name, "ModelAvailable", timeout=90)
        traffic = Load(stack, name)
        async with running(traffic, CLIENTS):
            for _ in range(8):  # four scale-up windows and cooldowns
                await asyncio.sleep(1)
                assert await replicas(stack, name) == (2, 2, 2)
        assert traffic.failures == [] and traffic.ok > CLIENTS * 10, (traffic.ok, traffic.failures[:5])
    finally:
        await unload(stack, name)
        await stack.wait_gone(name, timeout=60)


async def _async(value: bool) -> bool:
    return value
