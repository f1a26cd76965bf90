"""The processes of the local stack: how to start each one and how to tell it is ready."""

from __future__ import annotations

import asyncio
import os
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from stack.config import StackConfig

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Component:
    name: str
    argv: list[str]
    ready: ReadyCheck
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0


def components(config: StackConfig) -> list[Component]:
    """Start order: scheduler (control plane), Envoy (data plane), MLServer, then its agent."""
    host = config.host
    return [
        Component(
            "scheduler",
            [
                config.python,
                "-m",
                "scheduler",
                f"--host={host}",
                f"--scheduler-port={config.scheduler_port}",
                f"--agent-port={config.agent_port}",
                f"--xds-port={config.xds_port}",
                f"--envoy-listen-address={host}",
                f"--envoy-http-port={config.http_port}",
                f"--agent-grace-seconds={config.agent_grace_seconds}",
                f"--state-dir={config.home / 'state'}",
            ],
            ready=lambda: grpc_healthy(f"{host}:{config.scheduler_port}"),
        ),
        Component(
            "envoy",
            [
                config.binary("envoy"),
                "-c",
                str(write_envoy_bootstrap(config)),
                "--log-level",
                "warning",
                "--base-id",
                str(config.envoy_admin_port),  # lets several stacks share a machine
            ],
            ready=lambda: port_open(host, config.http_port),
        ),
        *server_replica(
            config,
            ReplicaPorts(config.mlserver_http_port, config.mlserver_grpc_port, config.mlserver_metrics_port),
            server=config.server_name,
            idx=0,
            capabilities=config.capabilities,
        ),
    ]


@dataclass(frozen=True)
class ReplicaPorts:
    http: int
    grpc: int
    metrics: int


def replica_names(config: StackConfig, server: str, idx: int) -> tuple[str, str]:
    """Process names of one server replica; the default server's first replica keeps short names."""
    if (server, idx) == (config.server_name, 0):
        return "mlserver", "agent"
    return f"mlserver-{server}-{idx}", f"agent-{server}-{idx}"


def models_dir(config: StackConfig, server: str, idx: int) -> Path:
    return config.home / "servers" / server / str(idx) / "models"


def server_replica(
    config: StackConfig, ports: ReplicaPorts, *, server: str, idx: int, capabilities: str
) -> list[Component]:
    """One server replica: an MLServer and the agent that registers it as ``server``/``idx``."""
    host = config.host
    mlserver_name, agent_name = replica_names(config, server, idx)
    repository = models_dir(config, server, idx)
    repository.mkdir(parents=True, exist_ok=True)
    return [
        Component(
            mlserver_name,
            [config.binary("mlserver"), "start", str(repository)],
            env={
                "MLSERVER_HOST": host,
                "MLSERVER_HTTP_PORT": str(ports.http),
                "MLSERVER_GRPC_PORT": str(ports.grpc),
                "MLSERVER_METRICS_PORT": str(ports.metrics),
                "MLSERVER_METRICS_HOST": host,
                "MLSERVER_MODEL_REPOSITORY_ROOT": str(repository),
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
                # Inference in the server process: on small machines a worker pool only adds a hop.
                "MLSERVER_PARALLEL_WORKERS": "0",
            },
            ready=lambda: http_ok(f"http://{host}:{ports.http}/v2/health/live"),
        ),
        Component(
            agent_name,
            [
                config.python,
                "-m",
                "agent",
                f"--server-name={server}",
                f"--replica-idx={idx}",
                f"--scheduler-host={host}",
                f"--scheduler-port={config.agent_port}",
                f"--inference-host={host}",
                f"--inference-http-port={ports.http}",
                f"--inference-grpc-port={ports.grpc}",
                f"--memory-bytes={config.memory_bytes}",
                f"--capabilities={capabilities}",
                f"--overcommit-percentage={config.overcommit_percentage}",
                f"--models-dir={repository}",
                f"--artifact-roots={config.agent_artifact_roots}",
            ],
            env={"MLSERVER_PARALLEL_WORKERS": "0"},
            ready=lambda: replica_registered(f"{host}:{config.scheduler_port}", server, idx),
        ),
    ]


def write_envoy_bootstrap(config: StackConfig) -> Path:
    template = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text())
    path = config.home / "envoy.yaml"
    path.write_text(
        template.substitute(
            node_id=f"meshserve-{config.http_port}",
            admin_address=config.host,
            admin_port=config.envoy_admin_port,
            xds_host=config.host,
            xds_port=config.xds_port,
        )
    )
    return path


def child_env(component: Component) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **component.env}


# -- readiness probes ------------------------------------------------------------------------------


async def port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def http_ok(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def grpc_healthy(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def server_registered(target: str, server: str) -> bool:
    return await replica_registered(target, server, None)


async def replica_registered(target: str, server: str, idx: int | None) -> bool:
    """The scheduler knows a connected replica of ``server`` (``idx``, or any)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
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


def server_spec_file(home: Path, server: str) -> Path:
    """Where ``meshserve server load`` leaves a Server's replica spec for the local controller."""
    return home / "resources" / "servers" / f"{server}.json"
