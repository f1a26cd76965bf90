"""``meshserve pipeline`` (the console script) against the real stack (scheduler, agent, MLServer):
a pipeline loaded before its models exist has ``modelsReady`` only once every step model is
available, and loses it when one is unloaded (seldon-pipelines.md §13 scenarios 20 and 21)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from samples import train
from tests.e2e.conftest import Stack
from tests.e2e.test_cli import cli, model_yaml

PIPELINE_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: e2e-pipe
spec:
  steps:
  - name: e2e-pipe-a
  - name: e2e-pipe-b
    inputs: [e2e-pipe-a]
    tensorMap: {e2e-pipe-a.outputs.predict: predict}
  output:
    steps: [e2e-pipe-b]
"""
MODELS = ("e2e-pipe-a", "e2e-pipe-b")


async def state(stack: Stack) -> dict[str, Any]:
    shown = await cli(stack, "pipeline", "status", "e2e-pipe")
    assert shown.returncode == 0, shown.stderr
    state: dict[str, Any] = json.loads(shown.stdout)["versions"][-1]["state"]
    return state


async def wait_models_ready(stack: Stack, wanted: bool, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (current := (await state(stack)).get("modelsReady", False)) != wanted:
        assert time.monotonic() < deadline, f"modelsReady stayed {current}"
        await asyncio.sleep(0.2)


async def test_cli_pipeline_before_its_models_then_models_ready(stack: Stack, tmp_path: Path) -> None:
    iris = str(train.ARTIFACTS / "iris")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE_YAML)
    files = {}
    for name in MODELS:
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(model_yaml(name, iris))
    load = await cli(stack, "pipeline", "load", "-f", str(pipeline))
    assert (load.returncode, load.stdout.strip()) == (0, "{}"), load.stderr
    try:
        first = await state(stack)
        # The session stack runs without Kafka, so no dataflow engine ever takes the pipeline.
        assert "modelsReady" not in first and first["status"] == "PipelineCreate", first

        loaded = await cli(stack, "model", "load", "-f", str(files["e2e-pipe-a"]))
        assert loaded.returncode == 0, loaded.stderr
        wait = await cli(
            stack, "model", "status", "e2e-pipe-a", "-w", "ModelAvailable", "--wait-timeout", "60"
        )
        assert wait.returncode == 0, wait.stderr
        assert "modelsReady" not in await state(stack), "one step model of two is not enough"

        loaded = await cli(stack, "model", "load", "-f", str(files["e2e-pipe-b"]))
        assert loaded.returncode == 0, loaded.stderr
        await wait_models_ready(stack, True)

        unloaded = await cli(stack, "model", "unload", "e2e-pipe-b")
        assert unloaded.returncode == 0, unloaded.stderr
        await wait_models_ready(stack, False)

        gone = await cli(stack, "pipeline", "unload", "e2e-pipe")
        assert (gone.returncode, gone.stdout.strip()) == (0, "{}"), gone.stderr
        assert (await state(stack))["status"] == "PipelineTerminated"
    finally:
        await cli(stack, "pipeline", "unload", "e2e-pipe")
        for name in MODELS:
            await cli(stack, "model", "unload", name)


async def test_cli_pipeline_infer_without_a_route_says_not_found(stack: Stack) -> None:
    """The real Envoy has no ``<p>.pipeline`` route for a pipeline that does not exist: REST 404
    and gRPC UNIMPLEMENTED, both turned into "pipeline not found" (exit 1), and a model of the
    same name is not called instead."""
    body = '{"inputs":[{"name":"predict","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
    rest = await cli(stack, "pipeline", "infer", "e2e-nopipe", body)
    assert rest.returncode == 1 and rest.stdout == ""
    assert rest.stderr.startswith("Error: HTTP 404: pipeline 'e2e-nopipe' not found: no route"), rest.stderr
    grpc_call = await cli(stack, "pipeline", "infer", "e2e-nopipe", "--inference-mode", "grpc", body)
    assert grpc_call.returncode == 1
    expected = "Error: UNIMPLEMENTED: pipeline 'e2e-nopipe' not found"
    assert grpc_call.stderr.startswith(expected), grpc_call.stderr
