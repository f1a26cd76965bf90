"""The agent heals its replica: a model MLServer lost (unloaded behind the scheduler's back, or MLServer
killed and restarted by the supervisor) answers again through Envoy within 30 s, with no manual step."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_serving_path import load

HEAL_S = 30


@pytest.fixture(scope="module")
async def heal_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # A stack of its own: these tests break its MLServer.
    async with running_stack(stack_config(tmp_path_factory.mktemp("heals"))) as stack:
        yield stack


async def answers(stack: Stack, name: str) -> bool:
    return (await stack.infer(name)).status == 200


async def available(stack: Stack, name: str) -> bool:
    status = await stack.model_status(name)
    states = scheduler_pb2.ModelStatus.ModelState
    return status is not None and states.Name(status.versions[-1].state.state) == "ModelAvailable"


async def loaded(stack: Stack, name: str) -> None:
    await load(stack, iris_model(name))
    await stack.wait_state(name, "ModelAvailable")
    assert await answers(stack, name)


async def test_model_unloaded_on_mlserver_behind_the_schedulers_back_comes_back(heal_stack: Stack) -> None:
    stack = heal_stack
    await loaded(stack, "heal-a")
    mlserver = f"http://127.0.0.1:{stack.config.mlserver_http_port}"
    async with stack.http.post(f"{mlserver}/v2/repository/models/heal-a_1/unload") as response:
        assert response.status == 200
    # Really gone from MLServer (asked directly: a request through Envoy is retried for a while, long
    # enough for the watcher to have healed it already).
    async with stack.http.get(f"{mlserver}/v2/models/heal-a_1/ready") as response:
        assert response.status != 200
    started = time.monotonic()
    await eventually(lambda: answers(stack, "heal-a"), timeout=HEAL_S, what="heal-a to answer through Envoy")
    await eventually(lambda: available(stack, "heal-a"), timeout=5, what="heal-a to be ModelAvailable")
    print(f"heal-a answered again {time.monotonic() - started:.1f}s after the unload")


async def test_killed_mlserver_is_restarted_and_its_models_reloaded(heal_stack: Stack) -> None:
    stack = heal_stack
    await loaded(stack, "heal-b")
    old = stack.supervisor.pid("mlserver")
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    await eventually(lambda: answers(stack, "heal-b"), timeout=HEAL_S, what="heal-b to answer after the kill")
    await eventually(lambda: available(stack, "heal-b"), timeout=5, what="heal-b to be ModelAvailable")
    assert stack.supervisor.pid("mlserver") != old
    print(f"heal-b answered again {time.monotonic() - started:.1f}s after SIGKILL of MLServer")
