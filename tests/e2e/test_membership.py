"""Server membership with real processes: a server that registers late, an agent that dies."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from pathlib import Path

from agent.backoff import Backoff
from tests.e2e.conftest import Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_scheduling import server_status
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import assert_served, traffic


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


def test_the_test_stacks_grace_outlasts_the_agents_reconnect_backoff(tmp_path: Path) -> None:
    """A disconnected agent's replica stays routed for the grace period; an agent whose reconnects
    backed off to the cap (agent/backoff.py) must still be back in time, with margin."""
    cap = inspect.signature(Backoff).parameters["max_s"].default
    assert Backoff().next_delay() <= cap  # jitter never goes past the cap
    assert stack_config(tmp_path).agent_grace_seconds >= 2 * cap


async def test_killed_agent_restarts_and_its_models_keep_serving(stack: Stack) -> None:
    """Envoy talks to MLServer directly, so inference never depends on the agent: under load from
    before the kill until after the restarted agent re-adopted the model (same MLServer, version 1),
    no request fails."""
    await load(stack, iris_model("survivor"))
    await stack.wait_state("survivor", "ModelAvailable")
    old_agent, mlserver = stack.supervisor.pid("agent"), stack.supervisor.pid("mlserver")
    async with traffic(stack, ["survivor"], rate_per_stream=12) as calls:
        await asyncio.sleep(1)
        os.kill(old_agent, signal.SIGKILL)
        killed = time.monotonic()
        connected: list[int] = []  # the server's connected replicas, as ServerStatus said over time

        async def readopted() -> bool:
            status = await server_status(stack, "mlserver")
            connected.append(status.availableReplicas)
            return (
                stack.supervisor.pid("agent") != old_agent
                and 0 in connected  # the scheduler saw the agent go ...
                and status.availableReplicas == 1  # ... and the new one subscribe
                and status.resources[0].numLoadedModels >= 1
            )

        await eventually(readopted, timeout=30, what="the restarted agent to re-adopt its models")
        took = time.monotonic() - killed
        status = await stack.wait_state("survivor", "ModelAvailable")
        assert [v.version for v in status.versions] == [1]  # adopted, not reloaded as a new version
        await asyncio.sleep(2)  # and a while after
    assert_served(calls, f"agent SIGKILL (re-adopted after {took:.1f} s)")
    assert stack.supervisor.pid("mlserver") == mlserver  # the agent restarted alone
    await unload(stack, "survivor")
    await stack.wait_gone("survivor")
