"""Readiness probes of the local stack's processes: a port free or open, HTTP 200, gRPC health, and a
server replica known to the scheduler."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.tls import ClientTls, channel


def port_free(host: str, port: int) -> bool:
    """Nothing listens on ``port`` (SO_REUSEADDR, as servers bind: a TIME_WAIT socket is no owner)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def http_ok(url: str, unix_socket: Path | None = None) -> bool:
    """``url`` answers 200 (through ``unix_socket`` when given: Envoy's admin with ``--tls``)."""
    connector = aiohttp.UnixConnector(path=str(unix_socket)) if unix_socket else None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), connector=connector) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def grpc_healthy(target: str, *, tls: ClientTls | None = None) -> bool:
    async with channel(target, tls) as grpc_channel:
        try:
            reply = await health_pb2_grpc.HealthStub(grpc_channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def server_registered(target: str, server: str, *, tls: ClientTls | None = None) -> bool:
    return await replica_registered(target, server, None, tls=tls)


async def replica_registered(
    target: str, server: str, idx: int | None, *, tls: ClientTls | None = None
) -> bool:
    """The scheduler knows a connected replica of ``server`` (``idx``, or any)."""
    async with channel(target, tls) as grpc_channel:
        stub = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        try:
            async for status in stub.ServerStatus(
                scheduler_pb2.ServerStatusRequest(subscriberName="meshserve-stack", name=server), timeout=2
            ):
                return any(idx is None or r.replicaIdx == idx for r in status.resources) and (
                    status.availableReplicas > 0
                )
        except grpc.aio.AioRpcError:
            return False
    return False
