"""Helpers for agent tests: a real MLServer process, a tiny iris model and a fake scheduler.

Plain functions (``start_mlserver``, ``train_iris_model``, ``FakeScheduler``) are reusable by other
suites; the fixtures below wrap them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from apis.mlops.agent import agent_pb2, agent_pb2_grpc

MLSERVER = str(Path(sys.executable).parent / "mlserver")
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def train_iris_model(folder: Path) -> Path:
    """Write a LogisticRegression iris classifier to ``folder/model.joblib`` (no model-settings.json)."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    folder.mkdir(parents=True, exist_ok=True)
    features, target = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(features, target), folder / "model.joblib")
    return folder


@dataclass
class MLServerProcess:
    process: subprocess.Popen[bytes]
    models_dir: Path
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_mlserver(models_dir: Path, log_path: Path, *, timeout_s: float = 60.0) -> MLServerProcess:
    """Start ``mlserver start <models_dir>`` on free ports and wait until it is live."""
    models_dir.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MLSERVER_HTTP_PORT": str(http_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics_port),
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_PARALLEL_WORKERS": "0",
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
        "MLSERVER_MODEL_REPOSITORY_ROOT": str(models_dir),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [MLSERVER, "start", str(models_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = MLServerProcess(process, models_dir, http_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited early:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"MLServer was not live after {timeout_s}s:\n{log_path.read_text()[-3000:]}")


@dataclass
class FakeScheduler(agent_pb2_grpc.AgentServiceServicer):
    """A real AgentService server: records subscriptions and events, lets the test push operations."""

    subscriptions: asyncio.Queue[agent_pb2.AgentSubscribeRequest] = field(default_factory=asyncio.Queue)
    events: asyncio.Queue[agent_pb2.ModelEventMessage] = field(default_factory=asyncio.Queue)
    _streams: list[asyncio.Queue[agent_pb2.ModelOperationMessage | None]] = field(default_factory=list)
    refuse_events: int = 0
    drains: asyncio.Queue[agent_pb2.AgentDrainRequest] = field(default_factory=asyncio.Queue)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    # AgentEventsAcked: off, it answers UNIMPLEMENTED (as Seldon); on, each scripted failure
    # ("end": the stream ends without an answer, "abort": the call fails, "answer-then-end": the
    # stream ends after answering) is used up by one batch.
    acked_events: bool = False
    ack_failures: list[str] = field(default_factory=list)
    acked_streams: int = 0

    async def Subscribe(
        self, request: agent_pb2.AgentSubscribeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[agent_pb2.ModelOperationMessage]:
        outgoing: asyncio.Queue[agent_pb2.ModelOperationMessage | None] = asyncio.Queue()
        self._streams.append(outgoing)
        await self.subscriptions.put(request)
        while (message := await outgoing.get()) is not None:
            yield message

    async def AgentEvent(
        self, request: agent_pb2.ModelEventMessage, context: grpc.aio.ServicerContext[object, object]
    ) -> agent_pb2.ModelEventResponse:
        if self.refuse_events > 0:  # a scheduler briefly unable to take events
            self.refuse_events -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
        await self.events.put(request)
        return agent_pb2.ModelEventResponse()

    async def ModelScalingTrigger(
        self,
        request_iterator: AsyncIterator[agent_pb2.ModelScalingTriggerMessage],
        context: grpc.aio.ServicerContext[object, object],
    ) -> agent_pb2.ModelScalingTriggerResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "model autoscaling is disabled")

    async def AgentDrain(
        self, request: agent_pb2.AgentDrainRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> agent_pb2.AgentDrainResponse:
        await self.drains.put(request)
        await self.drained.wait()  # a test holds the drain open while it moves models
        return agent_pb2.AgentDrainResponse(success=True)

    # meshserve's batched RPCs: absent, as on a Seldon scheduler (the agent falls back to the above).
    async def SubscribeBatched(
        self, request: agent_pb2.AgentSubscribeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[agent_pb2.ModelOperationBatch]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a meshserve scheduler")
        yield agent_pb2.ModelOperationBatch()  # type: ignore[unreachable]  # makes it a generator

    async def AgentEventsAcked(
        self,
        request_iterator: AsyncIterator[agent_pb2.ModelEventBatch],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[agent_pb2.ModelEventBatchAck]:
        if not self.acked_events:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not a meshserve scheduler")
        self.acked_streams += 1
        async for batch in request_iterator:
            failure = self.ack_failures.pop(0) if self.ack_failures else None
            if failure == "end":
                return  # taken, never answered: a connection dying under the write
            if failure == "abort":
                await context.abort(grpc.StatusCode.UNAVAILABLE, "not now")
            for event in batch.events:
                await self.events.put(event)
            yield agent_pb2.ModelEventBatchAck(sequence=batch.sequence)
            if failure == "answer-then-end":
                return  # the stream ends while the agent has nothing to send (a scheduler restart)

    def push(self, message: agent_pb2.ModelOperationMessage) -> None:
        """Send an operation down the most recent stream."""
        self._streams[-1].put_nowait(message)

    def end_stream(self) -> None:
        self._streams[-1].put_nowait(None)

    async def next_subscription(self, timeout_s: float = WAIT_S) -> agent_pb2.AgentSubscribeRequest:
        return await asyncio.wait_for(self.subscriptions.get(), timeout_s)

    async def next_event(self, timeout_s: float = WAIT_S) -> agent_pb2.ModelEventMessage:
        return await asyncio.wait_for(self.events.get(), timeout_s)


@pytest.fixture(scope="module")
def iris_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_iris_model(tmp_path_factory.mktemp("artifacts") / "iris")


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    root = tmp_path_factory.mktemp("mlserver")
    server = start_mlserver(root / "models", root / "mlserver.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def fake_scheduler() -> AsyncIterator[tuple[FakeScheduler, int]]:
    scheduler = FakeScheduler()
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(scheduler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield scheduler, port
    finally:
        await server.stop(grace=None)
