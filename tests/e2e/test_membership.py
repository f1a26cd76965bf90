"""Server membership with real processes: a server that registers late, an agent that dies."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_serving_path import load, unload


async def test_model_loaded_before_any_server_becomes_available_when_one_registers(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    async with running_stack(config, only={"scheduler", "envoy"}) as stack:
        await load(stack, iris_model("early"))
        failed = await stack.wait_state("early", "ScheduleFailed")
        assert "no servers" in failed.versions[0].state.reason
        assert (await stack.infer("early")).status == 404

        await stack.supervisor.start(only={"mlserver", "agent"})
        await stack.wait_state("early", "ModelAvailable")
        assert (await stack.infer("early")).status == 200


async def test_killed_agent_restarts_and_its_models_keep_serving(stack: Stack) -> None:
    await load(stack, iris_model("survivor"))
    await stack.wait_state("survivor", "ModelAvailable")
    old_agent = stack.supervisor.pid("agent")
    os.kill(old_agent, signal.SIGKILL)

    # Envoy talks to MLServer directly, so inference never depends on the agent being up.
    failures = 0
    for _ in range(20):
        failures += (await stack.infer("survivor")).status != 200
        await asyncio.sleep(0.05)
    assert failures == 0

    async def agent_back() -> bool:
        servers = [
            s async for s in stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest(name="mlserver"))
        ]
        return stack.supervisor.pid("agent") != old_agent and servers[0].resources[0].numLoadedModels >= 1

    await eventually(agent_back, what="the restarted agent to re-register its models")
    status = await stack.wait_state("survivor", "ModelAvailable")
    assert status.versions[0].version == 1  # adopted, not reloaded as a new version
    assert (await stack.infer("survivor")).status == 200
    await unload(stack, "survivor")
    await stack.wait_gone("survivor")
