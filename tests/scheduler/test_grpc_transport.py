"""The scheduler's gRPC servers send no BDP pings (decision 0032), seen on the wire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.runtime import NO_BDP_PROBE
from scheduler.app import SchedulerApp
from scheduler.config import SchedulerConfig
from stack.ports import free_ports
from tests.scheduler.fakes import model

PING = 0x6
ACK = 0x1
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class FrameTap:
    """A TCP relay that records the HTTP/2 frame types and flags the server sends."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.from_server: list[tuple[int, int]] = []

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._frames(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = await reader.readexactly(9)  # length (3), type, flags, stream id (4)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                self.from_server.append((header[3], header[4]))
                writer.write(header + payload)
                await writer.drain()
        writer.close()


@pytest.fixture
async def api_port(tmp_path: Path) -> AsyncIterator[int]:
    scheduler_port, agent_port, xds_port, envoy_port, metrics_port = free_ports(5)
    config = SchedulerConfig(
        scheduler_port=scheduler_port,
        agent_port=agent_port,
        xds_port=xds_port,
        envoy_http_port=envoy_port,
        metrics_port=metrics_port,
        min_envoys=0,
        state_dir=tmp_path,
        log_level="warning",
    )
    app = SchedulerApp(config)
    await app.start()
    try:
        yield scheduler_port
    finally:
        await app.stop(grace=0)


async def test_the_scheduler_answers_calls_without_pinging_for_bandwidth(api_port: int) -> None:
    tap = FrameTap(api_port)
    relay = await asyncio.start_server(tap.relay, "127.0.0.1", 0)
    port = relay.sockets[0].getsockname()[1]
    try:
        # The client sends no BDP pings of its own, so every PING the server sends is its own idea.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[NO_BDP_PROBE]) as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for i in range(20):  # data the server receives is what a BDP probe pings after
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model(f"m{i}")))
                await asyncio.sleep(0.01)
    finally:
        relay.close()
    kinds = {kind for kind, _ in tap.from_server}
    assert 0x0 in kinds and 0x1 in kinds, "the tap saw no responses: it does not parse the stream"
    pings = [flags for kind, flags in tap.from_server if kind == PING and not flags & ACK]
    assert pings == []
