"""Composition root of the scheduler process: builds every collaborator and serves three ports.

- scheduler API (``seldon.mlops.scheduler.Scheduler``), default 9004, with health and reflection;
- agent API (``seldon.mlops.agent.AgentService``), default 9005, with health;
- xDS (delta ADS), default 9002, which also serves Envoy's data-plane listener (default 9000), and
  Envoy's load reports (LRS) on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.load_stats.v3 import lrs_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from apis import runtime
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.logs import configure_logging
from apis.mlops.agent import agent_pb2, agent_pb2_grpc
from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.routing import Endpoint
from apis.tls import server_credentials, server_files
from scheduler.agent_api import AgentService
from scheduler.api import SchedulerService
from scheduler.chainer_api import ChainerService
from scheduler.config import SchedulerConfig, parse_args
from scheduler.core import Scheduler
from scheduler.errors import StatusMapping
from scheduler.experiments import Experiments
from scheduler.load import LoadView
from scheduler.metrics import SchedulerMetrics
from scheduler.model_autoscaling import ModelAutoscaling, autoscaled_targets
from scheduler.pipelines import Pipelines
from scheduler.policies import load_policy
from scheduler.server_scaling import ScalingSettings
from scheduler.store import StateStore
from xdsserver.cache import ResourceCache
from xdsserver.clusters import loopback_clusters
from xdsserver.listener import LISTENER_NAME, data_plane_listener
from xdsserver.load_stats import EMPTY_INTERVAL_S, LoadStatsServer
from xdsserver.report_scope import ReportScope
from xdsserver.routes import RoutePublisher
from xdsserver.server import XdsServer
from xdsserver.types import CLUSTER, LISTENER

log = structlog.get_logger("meshserve.scheduler")

SCALING_INTERVAL_SECONDS = 1.0

__all__ = ["SchedulerApp", "SchedulerConfig", "main", "parse_args", "serve"]


class SchedulerApp:
    """Owns the core, the xDS cache and server, and the three gRPC servers."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.cache = ResourceCache()
        self.xds = XdsServer(self.cache, min_envoys=config.min_envoys)
        self.routes = RoutePublisher(self.cache, self.xds)
        store = StateStore(config.state_dir / "scheduler.db" if config.state_dir else None)
        self.core = Scheduler(
            self.routes,
            policy=load_policy(config.placement_policy),
            agent_grace_seconds=config.agent_grace_seconds,
            store=store,
            server_scaling=ScalingSettings(
                enabled=config.enable_server_autoscaling,
                grace_s=config.server_scale_down_grace_seconds,
                packing=config.server_packing_enabled,
            ),
        )
        gateway = (
            Endpoint(
                config.pipeline_gateway_host,
                config.pipeline_gateway_http_port,
                config.pipeline_gateway_grpc_port,
            )
            if config.pipeline_gateway_http_port
            else None
        )
        self.pipelines = Pipelines(
            self.core, store, gateway=gateway, replicas=config.pipeline_engine_replicas
        )
        self.experiments = Experiments(self.core, store, self.pipelines)
        # Requests in flight per model version, from Envoy's load reports (LRS, on the xDS port);
        # the autoscaler subscribes to ``self.load``. Envoy reports only the model versions that
        # autoscale (none when autoscaling is off): the cost follows the consumer (decision 0015).
        self.load = LoadView()
        self.load_scope = ReportScope(self._reported_targets)
        if config.enable_model_autoscaling:
            self.core.on_model_change(lambda _: self.load_scope.changed())
        self.load_stats = LoadStatsServer(
            self.routes,
            self.load,
            scope=self.load_scope,
            interval_s=config.load_report_interval_seconds,
            # Off, the list stays empty for good: Envoy's (empty) reports can come rarely.
            empty_interval_s=None if config.enable_model_autoscaling else EMPTY_INTERVAL_S,
        )
        self.metrics = SchedulerMetrics(
            CollectorRegistry(), core=self.core, experiments=self.experiments, envoys=self.xds, load=self.load
        )
        # Off by default (as in Seldon): then nothing listens to Envoy's load reports.
        self.autoscaling = (
            ModelAutoscaling(self.core, config.autoscaling_thresholds)
            if config.enable_model_autoscaling
            else None
        )
        if self.autoscaling is not None:
            self.load.subscribe(self.autoscaling)
        self._servers: list[grpc.aio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._autoscaler_timer: asyncio.Task[None] | None = None
        self._scaler: asyncio.Task[None] | None = None

    def _reported_targets(self) -> set[str]:
        """The model versions Envoy reports load for; the load view keeps only theirs."""
        targets = set(autoscaled_targets(self.core.models)) if self.config.enable_model_autoscaling else set()
        self.load.retain(targets)
        return targets

    async def start(self) -> None:
        config = self.config
        # Before any server starts: a reconnecting Envoy must see the same routes as before.
        self.core.restore()
        self.pipelines.restore()  # before experiments: pipeline experiments plan over them
        self.experiments.restore()
        listen = config.envoy_listen_address
        loopback = "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen
        listener = data_plane_listener(
            address=listen,
            port=config.envoy_http_port,
            lua_code=config.lua_file.read_text(),
            access_log_path=config.envoy_access_log,
        )
        self.cache.apply(
            upserts=[
                (LISTENER, LISTENER_NAME, listener),
                *(
                    (CLUSTER, name, cluster)
                    for name, cluster in loopback_clusters(
                        address=loopback, port=config.envoy_http_port
                    ).items()
                ),
            ]
        )
        api = self._server(config.scheduler_port)
        # RPCs that land with later issues (gateway events) are answered UNIMPLEMENTED by grpc's
        # generated base class, which mypy-protobuf's stubs model as abstract.
        service = SchedulerService(self.core, self.experiments, self.pipelines)  # type: ignore[abstract]
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(service, api)
        # Dataflow engines subscribe on the same port (decision 0019).
        chainer_pb2_grpc.add_ChainerServicer_to_server(ChainerService(self.pipelines), api)
        _add_health(api, "seldon.mlops.scheduler.Scheduler")
        reflection.enable_server_reflection(
            [
                scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
                chainer_pb2.DESCRIPTOR.services_by_name["Chainer"].full_name,
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
        lrs_pb2_grpc.add_LoadReportingServiceServicer_to_server(self.load_stats, xds)
        for server in self._servers:
            await server.start()
        self._sweeper = asyncio.create_task(self._sweep_stuck(), name="stuck-operations")
        if self.autoscaling is not None:
            self._autoscaler_timer = asyncio.create_task(self.autoscaling.run(), name="model-autoscaling")
        if config.enable_server_autoscaling:  # else every decision would be "nothing"
            self._scaler = asyncio.create_task(self._scale_servers(), name="server-scaling")
        await self.metrics.serve(config.metrics_host, config.metrics_port)
        log.info(
            "scheduler started",
            api=f"{config.host}:{config.scheduler_port}",
            agents=f"{config.host}:{config.agent_port}",
            xds=f"{config.host}:{config.xds_port}",
            tls=config.tls_cert is not None,
        )

    def _server(self, port: int) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[StatusMapping(), self.metrics.interceptor],
            options=[
                GRPC_RECEIVE_LIMIT,
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                runtime.NO_BDP_PROBE,
            ],
        )
        address = f"{self.config.host}:{port}"
        files = server_files(self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca)
        if files is None:
            bound = server.add_insecure_port(address)
        else:  # mutual TLS: a client without a certificate signed by the CA is refused
            bound = server.add_secure_port(address, server_credentials(*files))
        if bound == 0:
            raise OSError(f"cannot listen on {self.config.host}:{port}")
        self._servers.append(server)
        return server

    async def _sweep_stuck(self) -> None:
        """Every quarter deadline: operations no agent answered are resent, then failed."""
        deadline = self.config.operation_deadline_seconds
        while True:
            await asyncio.sleep(deadline / 4)
            self.core.expire_stuck(deadline)

    async def _scale_servers(self) -> None:
        """Every second: server ScalingRequests where models need them (scheduler/server_scaling.py)."""
        while True:
            await asyncio.sleep(SCALING_INTERVAL_SECONDS)
            self.core.scale_servers()

    async def stop(self, grace: float = 1.0) -> None:
        for task in (self._sweeper, self._autoscaler_timer, self._scaler):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.metrics.close()
        self.pipelines.engines.close()  # engine streams end now, not when the server is torn down
        await self.core.close()
        self.routes.close()
        await asyncio.gather(*(s.stop(grace) for s in self._servers))


def _add_health(server: grpc.aio.Server, service: str) -> None:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ("", service):
        asyncio.get_running_loop().create_task(
            servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        ).add_done_callback(lambda t: t.result())


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
    config = parse_args(argv)
    configure_logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        runtime.run(serve(config))
