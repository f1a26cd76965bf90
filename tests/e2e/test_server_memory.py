"""A Server's replica memory and overcommit come from its podSpec, as in Seldon (reference scenario 23).

One replica declared with ``resources.requests.memory: 10Mi`` on its mlserver container and
``SELDON_OVERCOMMIT_PERCENTAGE: "0"`` on its agent holds ten 1 MB models (10,000,000 bytes of
10,485,760); the eleventh is ``ScheduleFailed``. Real scheduler, controller, agent and MLServer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, iris_model
from tests.e2e.test_cli import cli
from tests.e2e.test_serving_path import load, unload

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVER = "small-memory"
MANIFEST = f"""\
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {{name: {SERVER}}}
spec:
  serverConfig: mlserver
  replicas: 1
  podSpec:
    containers:
      - name: agent
        env:
          - {{name: SELDON_OVERCOMMIT_PERCENTAGE, value: "0"}}
      - name: mlserver
        image: seldonio/mlserver:1.7.1
        resources:
          requests: {{memory: 10Mi}}
"""
MODELS = 10


async def test_podspec_memory_without_overcommit_holds_ten_1mb_models_not_eleven(
    stack: Stack, tmp_path: Path
) -> None:
    manifest = tmp_path / "server.yaml"
    manifest.write_text(MANIFEST)
    loaded = await cli(stack, "server", "load", "-f", str(manifest), "--home", str(stack.config.home))
    assert loaded.returncode == 0, loaded.stderr
    waited = await cli(stack, "server", "status", SERVER, "-w", "--wait-timeout", "90")
    assert waited.returncode == 0, waited.stderr
    shown = json.loads((await cli(stack, "server", "status", SERVER, "-o", "json")).stdout)
    (replica,) = shown["resources"]
    assert int(replica["totalMemoryBytes"]) == 10 * 2**20
    assert int(replica.get("overCommitPercentage", 0)) == 0

    names = [f"small{i}" for i in range(1, MODELS + 2)]
    try:
        for name in names:
            await load(stack, iris_model(name, memoryBytes=1_000_000, server=SERVER))
        for name in names[:MODELS]:
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        status = await stack.wait_state(names[-1], "ScheduleFailed")
        assert "bytes free" in status.versions[-1].state.reason
    finally:
        for name in names:
            await unload(stack, name)
        unloaded = await cli(stack, "server", "unload", SERVER)
        assert unloaded.returncode == 0, unloaded.stderr
