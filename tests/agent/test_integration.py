"""The agent against a real MLServer process and a fake scheduler (a real grpc.aio AgentService)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import structlog

from agent.app import run_agent
from agent.config import AgentConfig
from agent.repository import MARKER
from apis.mlops.agent import agent_pb2
from stack.ports import free_ports
from tests.agent.agent_protos import load_op, model_version, unload_op

if TYPE_CHECKING:
    from tests.agent.conftest import FakeScheduler, MLServerProcess

Event = agent_pb2.ModelEventMessage.Event
MEMORY = 1_000_000
INFER_BODY = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}


def agent_config(mlserver: MLServerProcess, scheduler_port: int) -> AgentConfig:
    reload_ports = free_ports(2)
    return AgentConfig(
        server_name="mlserver",
        replica_idx=0,
        models_dir=mlserver.models_dir,
        scheduler_port=scheduler_port,
        inference_http_port=mlserver.http_port,
        inference_grpc_port=mlserver.grpc_port,
        memory_bytes=MEMORY,
        overcommit_percentage=10,
        unload_grace_seconds=0.1,
        startup_timeout_seconds=30,
        parallel_workers=0,
        # The artifacts (tmp_path_factory folders) sit beside the MLServer's models dir.
        artifact_roots=(mlserver.models_dir.parent.parent,),
        watch_interval_seconds=0.2,
        debug_port=0,
        reload_http_port=reload_ports[0],
        reload_grpc_port=reload_ports[1],
    )


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_agent(config, logger=structlog.get_logger()))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def post(url: str, body: object = None) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def infer(mlserver: MLServerProcess, name: str) -> tuple[int, object]:
    return await post(f"{mlserver.url}/v2/models/{name}/infer", INFER_BODY)


@pytest.fixture
def scheduler(fake_scheduler: tuple[FakeScheduler, int]) -> FakeScheduler:
    return fake_scheduler[0]


@pytest.fixture
def config(mlserver: MLServerProcess, fake_scheduler: tuple[FakeScheduler, int]) -> AgentConfig:
    return agent_config(mlserver, fake_scheduler[1])


async def test_load_infer_fail_unload(
    scheduler: FakeScheduler, config: AgentConfig, mlserver: MLServerProcess, iris_model_dir: Path
) -> None:
    async with running_agent(config):
        subscription = await scheduler.next_subscription()
        assert subscription.serverName == "mlserver"
        assert subscription.shared
        assert subscription.replicaIdx == 0
        replica = subscription.replicaConfig
        assert replica.inferenceSvc == "127.0.0.1"
        assert replica.inferenceHttpPort == mlserver.http_port
        assert replica.inferenceGrpcPort == mlserver.grpc_port
        assert replica.memoryBytes == MEMORY
        assert replica.overCommitPercentage == 10
        assert list(replica.capabilities) == list(config.capabilities)
        assert list(subscription.loadedModels) == []
        assert subscription.availableMemoryBytes == 1_100_000

        iris = model_version("iris", 1, str(iris_model_dir), memory_bytes=100_000)
        scheduler.push(load_op(iris))
        event = await scheduler.next_event()
        assert (event.modelName, event.modelVersion, Event.Name(event.event)) == ("iris", 1, "LOADED")
        assert event.message == ""
        assert event.availableMemoryBytes == 1_000_000
        assert event.runtimeInfo.mlserver.parallelWorkers == 0

        status, body = await infer(mlserver, "iris_1")
        assert status == 200, body
        assert isinstance(body, dict) and body["model_name"] == "iris_1"
        settings = json.loads((mlserver.models_dir / "iris_1" / "model-settings.json").read_text())
        assert settings["name"] == "iris_1"
        assert settings["parameters"]["version"] == "1"

        missing = model_version("missing", 1, str(iris_model_dir.parent / "nonexistent"))
        scheduler.push(load_op(missing))
        event = await scheduler.next_event()
        assert (event.modelName, Event.Name(event.event)) == ("missing", "LOAD_FAILED")
        assert "nonexistent does not exist" in event.message
        assert not (mlserver.models_dir / "missing_1").exists()

        scheduler.push(unload_op(iris))
        event = await scheduler.next_event()
        assert (event.modelName, event.modelVersion, Event.Name(event.event)) == ("iris", 1, "UNLOADED")
        assert event.availableMemoryBytes == 1_100_000
        status, _ = await infer(mlserver, "iris_1")
        assert status == 404
        assert not (mlserver.models_dir / "iris_1").exists()


async def test_restarted_agent_adopts_loaded_models(
    scheduler: FakeScheduler, config: AgentConfig, mlserver: MLServerProcess, iris_model_dir: Path
) -> None:
    iris = model_version("iris", 2, f"file://{iris_model_dir}", memory_bytes=1000)
    async with running_agent(config):
        await scheduler.next_subscription()
        scheduler.push(load_op(iris))
        assert Event.Name((await scheduler.next_event()).event) == "LOADED"
        assert (mlserver.models_dir / "iris_2" / MARKER).is_file()

    # A model the agent did not load (no marker) must be removed by the next agent.
    stray = mlserver.models_dir / "stray_1"
    shutil.copytree(iris_model_dir, stray)
    (stray / "model-settings.json").write_text(
        json.dumps({"name": "stray_1", "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib"}})
    )  # fmt: skip
    status, body = await post(f"{mlserver.url}/v2/repository/models/stray_1/load")
    assert status == 200, body

    async with running_agent(config):
        subscription = await scheduler.next_subscription()
        assert list(subscription.loadedModels) == [iris]
        assert subscription.availableMemoryBytes == 1_100_000 - 1000
        status, _ = await infer(mlserver, "iris_2")
        assert status == 200
        status, _ = await infer(mlserver, "stray_1")
        assert status == 404
        assert not stray.exists()

        # A repeated LOAD of an adopted model is a no-op that answers LOADED again.
        scheduler.push(load_op(iris))
        assert Event.Name((await scheduler.next_event()).event) == "LOADED"

        # The stream ending makes the agent re-subscribe with what it holds.
        scheduler.end_stream()
        subscription = await scheduler.next_subscription()
        assert list(subscription.loadedModels) == [iris]

        scheduler.push(unload_op(iris))
        assert Event.Name((await scheduler.next_event()).event) == "UNLOADED"


async def test_a_drain_refuses_loads_runs_unloads_and_ends_the_agent(
    scheduler: FakeScheduler, config: AgentConfig, mlserver: MLServerProcess, iris_model_dir: Path
) -> None:
    drain = asyncio.Event()
    agent = asyncio.create_task(run_agent(config, logger=structlog.get_logger(), drain_requested=drain))
    try:
        await scheduler.next_subscription()
        iris = model_version("iris", 1, str(iris_model_dir))
        scheduler.push(load_op(iris))
        assert Event.Name((await scheduler.next_event()).event) == "LOADED"
        drain.set()
        request = await asyncio.wait_for(scheduler.drains.get(), 5)
        assert (request.serverName, request.replicaIdx) == ("mlserver", 0)
        # While the scheduler moves the models: no new load, and its unloads run.
        scheduler.push(load_op(model_version("late", 1, str(iris_model_dir))))
        event = await scheduler.next_event()
        assert (event.modelName, Event.Name(event.event), event.message) == (
            "late",
            "LOAD_FAILED",
            "server replica is draining",
        )
        assert not (mlserver.models_dir / "late_1").exists()
        scheduler.push(unload_op(iris))
        event = await scheduler.next_event()
        assert (event.modelName, Event.Name(event.event)) == ("iris", "UNLOADED")
        assert not agent.done()
        scheduler.drained.set()
        await asyncio.wait_for(agent, 5)  # drained: the agent ends by itself
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
    assert (await infer(mlserver, "iris_1"))[0] == 404


async def test_a_drain_that_does_not_finish_in_time_ends_the_agent_at_its_deadline(
    scheduler: FakeScheduler, config: AgentConfig
) -> None:
    drain = asyncio.Event()
    quick = dataclasses.replace(config, drain_timeout_seconds=0.5)
    agent = asyncio.create_task(run_agent(quick, logger=structlog.get_logger(), drain_requested=drain))
    try:
        await scheduler.next_subscription()
        drain.set()
        await asyncio.wait_for(scheduler.drains.get(), 5)
        await asyncio.wait_for(agent, 10)  # the scheduler never answered: the deadline ends it
    finally:
        agent.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent
