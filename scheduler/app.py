"""Composition root of the scheduler process: builds every collaborator and serves three ports.

- scheduler API (``seldon.mlops.scheduler.Scheduler``), default 9004, with health and reflection;
- agent API (``seldon.mlops.agent.AgentService``), default 9005, with health;
- xDS (delta ADS), default 9002, which also serves Envoy's data-plane listener (default 9000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apis.mlops.agent import agent_pb2, agent_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from scheduler.agent_api import AgentService
from scheduler.api import SchedulerService
from scheduler.core import Scheduler
from scheduler.logs import configure_logging
from scheduler.policies import DEFAULT_POLICY, load_policy
from scheduler.store import StateStore
from xdsserver import resources
from xdsserver.cache import ResourceCache
from xdsserver.routes import RoutePublisher
from xdsserver.server import XdsServer
from xdsserver.types import LISTENER

log = structlog.get_logger("meshserve.scheduler")

DEFAULT_LUA = Path(__file__).resolve().parent.parent / "envoy" / "seldon.lua"


@dataclass(frozen=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    scheduler_port: int = 9004
    agent_port: int = 9005
    xds_port: int = 9002
    envoy_listen_address: str = "127.0.0.1"
    envoy_http_port: int = 9000
    lua_file: Path = DEFAULT_LUA
    agent_grace_seconds: float = 15.0
    min_envoys: int = 1
    state_dir: Path | None = None  # None: keep nothing across restarts
    placement_policy: str = DEFAULT_POLICY


class SchedulerApp:
    """Owns the core, the xDS cache and server, and the three gRPC servers."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.cache = ResourceCache()
        self.xds = XdsServer(self.cache, min_envoys=config.min_envoys)
        self.core = Scheduler(
            RoutePublisher(self.cache),
            self.xds,
            policy=load_policy(config.placement_policy),
            agent_grace_seconds=config.agent_grace_seconds,
            store=StateStore(config.state_dir / "scheduler.db" if config.state_dir else None),
        )
        self.xds.add_ack_listener(self.core.envoy_acked)
        self._servers: list[grpc.aio.Server] = []

    async def start(self) -> None:
        config = self.config
        # Before any server starts: a reconnecting Envoy must see the same routes as before.
        self.core.restore()
        self.cache.apply(
            upserts=[
                (
                    LISTENER,
                    resources.LISTENER_NAME,
                    resources.listener(
                        address=config.envoy_listen_address,
                        port=config.envoy_http_port,
                        lua_code=config.lua_file.read_text(),
                    ),
                )
            ]
        )
        api = self._server(config.scheduler_port)
        # Pipeline and experiment RPCs land with their issues; until then grpc's generated base
        # class answers them UNIMPLEMENTED, which mypy-protobuf's stubs model as abstract.
        service = SchedulerService(self.core)  # type: ignore[abstract]
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, api)
        _add_health(api, "seldon.mlops.scheduler.Scheduler")
        reflection.enable_server_reflection(
            [
                scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            api,
        )
        agents = self._server(config.agent_port)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(self.core), agents)
        _add_health(agents, agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name)
        xds = self._server(config.xds_port)
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.xds, xds)
        for server in self._servers:
            await server.start()
        log.info(
            "scheduler started",
            api=f"{config.host}:{config.scheduler_port}",
            agents=f"{config.host}:{config.agent_port}",
            xds=f"{config.host}:{config.xds_port}",
        )

    def _server(self, port: int) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        bound = server.add_insecure_port(f"{self.config.host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {self.config.host}:{port}")
        self._servers.append(server)
        return server

    async def stop(self, grace: float = 1.0) -> None:
        await self.core.close()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))


def _add_health(server: grpc.aio.Server, service: str) -> None:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", service):
        asyncio.get_running_loop().create_task(
            servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        ).add_done_callback(lambda t: t.result())


def parse_args(argv: list[str] | None = None) -> SchedulerConfig:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m scheduler", description="meshserve scheduler")
    parser.add_argument("--host", default=env("MESHSERVE_BIND", "127.0.0.1"), help="address to bind")
    parser.add_argument("--scheduler-port", type=int, default=int(env("MESHSERVE_SCHEDULER_PORT", "9004")))
    parser.add_argument("--agent-port", type=int, default=int(env("MESHSERVE_AGENT_PORT", "9005")))
    parser.add_argument("--xds-port", type=int, default=int(env("MESHSERVE_XDS_PORT", "9002")))
    parser.add_argument("--envoy-listen-address", default=env("MESHSERVE_ENVOY_ADDRESS", "127.0.0.1"))
    parser.add_argument("--envoy-http-port", type=int, default=int(env("MESHSERVE_HTTP_PORT", "9000")))
    parser.add_argument("--lua-file", type=Path, default=DEFAULT_LUA)
    parser.add_argument(
        "--agent-grace-seconds",
        type=float,
        default=15.0,
        help="how long a disconnected agent's models stay routed, waiting for it to reconnect",
    )
    parser.add_argument("--min-envoys", type=int, default=1, help="Envoys that must ACK a route")
    parser.add_argument(
        "--state-dir",
        default=env("MESHSERVE_STATE_DIR", str(Path(env("MESHSERVE_HOME", ".meshserve")) / "state")),
        help="where desired state is kept (SQLite); empty string: keep nothing",
    )
    parser.add_argument(
        "--placement-policy",
        default=env("MESHSERVE_PLACEMENT_POLICY", DEFAULT_POLICY),
        help="placement policy name (entry-point group meshserve.placement; docs/placement-plugins.md)",
    )
    args = parser.parse_args(argv)
    return SchedulerConfig(
        host=args.host,
        scheduler_port=args.scheduler_port,
        agent_port=args.agent_port,
        xds_port=args.xds_port,
        envoy_listen_address=args.envoy_listen_address,
        envoy_http_port=args.envoy_http_port,
        lua_file=args.lua_file,
        agent_grace_seconds=args.agent_grace_seconds,
        min_envoys=args.min_envoys,
        placement_policy=args.placement_policy,
        state_dir=Path(args.state_dir).resolve() if args.state_dir else None,
    )


async def serve(config: SchedulerConfig) -> None:
    app = SchedulerApp(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("scheduler stopping")
    await app.stop()


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))
