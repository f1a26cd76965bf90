"""A real local stack (scheduler, Envoy, MLServer, agent) on free loopback ports, once per session."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from apis import tls
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from samples import train
from stack.config import StackConfig
from stack.supervisor import Supervisor

IRIS_IN = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}
ModelState = scheduler_pb2.ModelStatus.ModelState


def stack_config(home: Path, **overrides: object) -> StackConfig:
    # Tests write artifacts into their own tmp folders, siblings of the stack's home.
    overrides.setdefault("artifact_roots", str(home.parent))
    return StackConfig.on_free_ports(home, **overrides)


@dataclass
class Stack:
    config: StackConfig
    supervisor: Supervisor
    scheduler: scheduler_pb2_grpc.SchedulerAsyncStub
    inference: v2_dataplane_pb2_grpc.GRPCInferenceServiceAsyncStub
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.config.scheduler_port}"

    async def model_status(self, name: str) -> scheduler_pb2.ModelStatusResponse | None:
        request = scheduler_pb2.ModelStatusRequest(
            subscriberName="tests", model=scheduler_pb2.ModelReference(name=name)
        )
        try:
            async for status in self.scheduler.ModelStatus(request, timeout=5):
                return status
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return None

    async def wait_state(
        self, name: str, state: str, timeout: float = 60
    ) -> scheduler_pb2.ModelStatusResponse:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.model_status(name)
            if last is not None and ModelState.Name(last.versions[-1].state.state) == state:
                return last
            await asyncio.sleep(0.1)
        raise AssertionError(f"model {name} never reached {state}; last status: {last}")

    async def wait_gone(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.model_status(name) is None:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"model {name} was not removed")

    async def infer(
        self, model: str | None, path_model: str = "iris", **headers: str
    ) -> aiohttp.ClientResponse:
        if model is not None:
            headers["seldon-model"] = model
        async with self.http.post(
            f"{self.url}/v2/models/{path_model}/infer", json=IRIS_IN, headers=headers
        ) as r:
            await r.read()
            return r


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


async def kill_supervised(stack: Stack, name: str) -> tuple[float, int]:
    """SIGKILL the real process ``name``; returns when it was killed and its old pid, once the
    stack's supervisor has started it again."""
    old_pid = stack.supervisor.pid(name)
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()

    async def restarted() -> bool:
        return stack.supervisor.running(name) and stack.supervisor.pid(name) != old_pid

    await eventually(restarted, timeout=30, what=f"the supervisor restarting {name}")
    return killed, old_pid


@contextlib.asynccontextmanager
async def running_stack(config: StackConfig, only: set[str] | None = None) -> AsyncIterator[Stack]:
    """The stack's processes (all, or ``only`` some), restarted if they die while in use."""
    train.ensure_artifacts()
    supervisor = Supervisor(config)
    stop = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    try:
        await supervisor.start(only)
        watcher = asyncio.create_task(supervisor.operate(stop))
        async with (
            tls.channel(f"127.0.0.1:{config.scheduler_port}", config.client_tls("cli")) as scheduler,
            grpc.aio.insecure_channel(f"127.0.0.1:{config.http_port}") as envoy,
            aiohttp.ClientSession() as http,
        ):
            yield Stack(
                config,
                supervisor,
                scheduler_pb2_grpc.SchedulerStub(scheduler),
                v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(envoy),
                http,
            )
    finally:
        # Also when the test failed: the watcher ends before the processes are stopped.
        stop.set()
        if watcher is not None:
            await watcher
        await supervisor.stop()


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(stack_config(tmp_path_factory.mktemp("stack"))) as running:
        yield running


def iris_model(name: str, **spec: object) -> scheduler_pb2.Model:
    uri = f"file://{train.ARTIFACTS / 'iris'}"
    model_spec = scheduler_pb2.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=100_000)
    for key, value in spec.items():
        if key == "requirements":
            del model_spec.requirements[:]
            model_spec.requirements.extend(value)  # type: ignore[arg-type]
        else:
            setattr(model_spec, key, value)
    return scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name=name),
        modelSpec=model_spec,
        deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1),
    )
