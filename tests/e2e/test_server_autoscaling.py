"""Server autoscaling and drains on the real stack (issue 10 items 5 and 6; reference scenario 46).

The scheduler asks for replicas (ScalingRequest on SubscribeServerStatus) and the local controller
carries the request out within the Server's minReplicas/maxReplicas; an agent sent SIGTERM drains its
replica (AgentDrain) before it exits. Every claim is checked under continuous REST and gRPC load
through Envoy, counting each request: none may fail.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import pytest

from stack.components import replica_names
from tests.e2e.conftest import Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_local_stack import alive
from tests.e2e.test_scheduling import (
    declare,
    expected_replicas,
    replica_pids,
    replica_stopped,
    running_replicas,
    server_yaml,
    serving,
)
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import assert_served, traffic

GRACE_S = 3.0  # the stack's scale-down grace: short, so the test waits little
SERVER = "auto"
NEEDS = ["sklearn", SERVER]  # only this server has the capability: these models land there
RATE_PER_STREAM = 12.0  # two streams (REST, gRPC) per model: 24 req/s for one model


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("autoscaling")
    async with running_stack(stack_config(home, server_scale_down_grace_seconds=GRACE_S)) as running:
        yield running


async def declare_auto(stack: Stack, folder: Path, *, replicas: int, low: int, high: int) -> None:
    manifest = folder / "auto.yaml"
    spec = {"replicas": replicas, "minReplicas": low, "maxReplicas": high, "extraCapabilities": [SERVER]}
    manifest.write_text(server_yaml(SERVER, **spec))
    await declare(stack, manifest, SERVER)


async def scale_model(stack: Stack, name: str, replicas: int) -> None:
    model = iris_model(name, requirements=NEEDS)
    model.deploymentSpec.replicas = replicas
    await load(stack, model)


async def available_on(stack: Stack, name: str, replicas: set[int]) -> bool:
    return await serving(stack, name) == (SERVER, replicas)


async def test_scenario_46_an_emptied_server_replica_is_removed(stack: Stack, tmp_path: Path) -> None:
    """A Server with 2 replicas (min 1) hosting a model with 2 replicas; the model scales to 1:
    the replica left with no model is released after the grace period, inference works throughout."""
    await declare_auto(stack, tmp_path, replicas=2, low=1, high=3)
    await scale_model(stack, "wide", 2)
    await stack.wait_state("wide", "ModelAvailable", timeout=90)
    assert await available_on(stack, "wide", {0, 1})
    async with traffic(stack, ["wide"], rate_per_stream=RATE_PER_STREAM) as calls:
        await scale_model(stack, "wide", 1)
        await eventually(
            lambda: _is(expected_replicas(stack, SERVER), 1), timeout=60, what="the server to go to 1"
        )
        await eventually(
            lambda: _now(running_replicas(stack, SERVER) == {0}), timeout=60, what="replica 1 to stop"
        )
        await asyncio.sleep(1)
    assert_served(calls, "scenario 46: server scale-in on an empty replica")
    assert calls.rate() >= 20
    assert await available_on(stack, "wide", {0})


async def test_a_model_wanting_more_replicas_grows_the_server_then_scale_in_waits_for_the_grace_period(
    stack: Stack, tmp_path: Path
) -> None:
    """``replicas: 3`` on a 1-replica server (max 3): the scheduler asks for 3 replicas, the controller
    starts them and all 3 become Available; scaled back to 1, the empty replicas go after the grace
    period (not before), drained and stopped. No request fails."""
    await declare_auto(stack, tmp_path, replicas=1, low=1, high=3)
    await scale_model(stack, "wide", 1)
    await stack.wait_state("wide", "ModelAvailable", timeout=90)
    async with traffic(stack, ["wide"], rate_per_stream=RATE_PER_STREAM) as calls:
        await scale_model(stack, "wide", 3)
        await eventually(
            lambda: available_on(stack, "wide", {0, 1, 2}), timeout=180, what="3 replicas of wide"
        )
        status = await stack.wait_state("wide", "ModelAvailable")
        assert status.versions[-1].state.availableReplicas == 3
        assert await expected_replicas(stack, SERVER) == 3  # maxReplicas
        assert running_replicas(stack, SERVER) == {0, 1, 2}
        grown = assert_served(calls, "server grown for replicas: 3")
        pids = {i: replica_pids(stack, SERVER, i) for i in (1, 2)}

        scaled_at = time.monotonic()
        await scale_model(stack, "wide", 1)
        await eventually(
            lambda: _is(expected_replicas(stack, SERVER), 1), timeout=60, what="the server to go to 1"
        )
        assert time.monotonic() - scaled_at >= GRACE_S  # empty replicas waited for the grace period
        await eventually(
            lambda: _now(all(replica_stopped(stack, SERVER, i, pids[i]) for i in (1, 2))),
            timeout=60,
            what="replicas 1 and 2 to stop",
        )
        await asyncio.sleep(1)
    assert_served(calls, f"{grown}; then scale-in after the grace period")
    stopped_agent = replica_names(stack.config, SERVER, 2)[1]  # replica 2 ran in this test only
    assert "agent stopped after draining" in (stack.config.logs / f"{stopped_agent}.log").read_text()
    assert calls.rate() >= 20
    assert await available_on(stack, "wide", {0})


async def test_sigterm_drains_a_replica_under_load_make_before_break(stack: Stack, tmp_path: Path) -> None:
    """SIGTERM to an agent: its replica takes no new model, its models load on the other replica and
    are routed there before they are unloaded here, then the agent exits; 0 failed requests."""
    await declare_auto(stack, tmp_path, replicas=2, low=2, high=3)  # min 2: no scale-in meanwhile
    await scale_model(stack, "wide", 1)
    await scale_model(stack, "solo", 1)
    for name in ("wide", "solo"):
        await stack.wait_state(name, "ModelAvailable", timeout=90)
    _, [drained] = await serving(stack, "solo")
    other = 1 - drained
    mlserver_name, agent_name = replica_names(stack.config, SERVER, drained)
    agent_pid = stack.supervisor.pid(agent_name)
    mlserver_port = stack.supervisor.component(mlserver_name).binds[0]
    on_drained = [n for n in ("wide", "solo") if (await serving(stack, n))[1] == {drained}]

    async with traffic(stack, ["wide", "solo"], rate_per_stream=RATE_PER_STREAM / 2) as calls:
        await asyncio.sleep(1)
        os.kill(agent_pid, 15)
        await eventually(lambda: _now(not alive(agent_pid)), timeout=60, what="the drained agent to exit")
        # By the time the agent exits, its models run on the other replica and not on this MLServer.
        for name in on_drained:
            assert await available_on(stack, name, {other}), name
            assert not await mlserver_holds(mlserver_port, f"{name}_1"), name
        await asyncio.sleep(1)
    assert_served(calls, f"drain of replica {drained} ({', '.join(on_drained)}) by SIGTERM")
    assert calls.rate() >= 20
    log = (stack.config.logs / f"{agent_name}.log").read_text()
    assert "drained: every model runs elsewhere" in log and "agent stopped after draining" in log
    for name in ("wide", "solo"):
        await unload(stack, name)
        await stack.wait_gone(name)


async def mlserver_holds(port: int, served_name: str) -> bool:
    url = f"http://127.0.0.1:{port}/v2/models/{served_name}/ready"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status == 200


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def _now(value: bool) -> bool:
    return value
