"""Requests in flight reach the scheduler from Envoy's load reports (LRS), through the real stack.

A model that holds every request until the test opens a gate (a file in its folder) keeps a known
number of requests in flight between Envoy and MLServer; the scheduler's metrics must show exactly
that many for the model version and its replica, then none once they are answered, and count every
one of them as completed. Envoy reports only the models that autoscale (decision 0015), so the stack
runs with model autoscaling on and the model sets minReplicas/maxReplicas (the lag threshold, 30 by
default, stays far above the requests held: nothing scales).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import IRIS_IN, Stack, eventually, running_stack, stack_config

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELD = 4
GATED_MODEL = '''
import asyncio
import pathlib

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class GatedModel(MLModel):
    """Answers each request once the gate file exists (at most 120 s)."""

    async def load(self) -> bool:
        self._gate = pathlib.Path(GATE)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        for _ in range(1200):
            if self._gate.exists():
                break
            await asyncio.sleep(0.1)
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("echo", NumpyCodec.decode_input(payload.inputs[0]))],
        )
'''


def gated_artifact(root: Path) -> Path:
    artifact = root / "artifact"
    artifact.mkdir(parents=True)
    gate = root / "open"
    (artifact / "gated_runtime.py").write_text(f"GATE = {str(gate)!r}\n{GATED_MODEL}")
    return artifact


async def scheduler_metric(stack: Stack, name: str, **labels: str) -> float:
    async with stack.http.get(f"http://127.0.0.1:{stack.config.scheduler_metrics_port}/metrics") as r:
        text = await r.text()
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("load-reports"), enable_model_autoscaling=True)
    async with running_stack(config) as running:
        yield running


async def test_requests_in_flight_reach_the_scheduler(stack: Stack, tmp_path: Path) -> None:
    artifact = gated_artifact(tmp_path / "gated")
    model = scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name="gated"),
        modelSpec=scheduler_pb2.ModelSpec(
            uri=f"file://{artifact}", requirements=["python"], memoryBytes=1000
        ),
        deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1, minReplicas=1, maxReplicas=2),
    )
    await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=10)
    try:
        await stack.wait_state("gated", "ModelAvailable")
        server = stack.config.server_name

        async def infer() -> int:
            async with stack.http.post(
                f"{stack.url}/v2/models/gated/infer", json=IRIS_IN, headers={"seldon-model": "gated"}
            ) as r:
                await r.read()
                return r.status

        held = [asyncio.create_task(infer()) for _ in range(HELD)]

        async def all_in_flight() -> bool:
            model_count = await scheduler_metric(
                stack, "meshserve_scheduler_model_requests_in_flight", model_internal="gated_1"
            )
            replica_count = await scheduler_metric(
                stack,
                "meshserve_scheduler_replica_requests_in_flight",
                model_internal="gated_1",
                server=server,
                server_replica="0",
            )
            return model_count == HELD and replica_count == HELD

        await eventually(all_in_flight, timeout=60, what=f"{HELD} requests in flight for gated_1")
        assert not any(task.done() for task in held)  # the report was true: nothing answered yet
        (tmp_path / "gated" / "open").touch()
        assert await asyncio.gather(*held) == [200] * HELD

        async def drained() -> bool:
            in_flight = await scheduler_metric(
                stack, "meshserve_scheduler_model_requests_in_flight", model_internal="gated_1"
            )
            completed = await scheduler_metric(
                stack, "meshserve_scheduler_model_requests_completed_total", model_internal="gated_1"
            )
            return in_flight == 0 and completed == HELD

        await eventually(drained, timeout=60, what="no request in flight and all completed")
    finally:
        (tmp_path / "gated" / "open").touch()
        await stack.scheduler.UnloadModel(
            scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name="gated")), timeout=10
        )
