"""The scheduler's Prometheus metrics (docs/metrics.md), served on ``--metrics-port`` (9007).

Collected when Prometheus scrapes, from the core's own state: nothing is counted on the control
plane's hot path (agent events, xDS ACKs), so between scrapes the metrics cost nothing. The only
things recorded as they happen are Scheduler API call durations (one histogram observation per
unary call, e.g. LoadModel) and resources an Envoy rejected (rare).

Imports no xDS code (the import contracts, decision 0009): the composition root passes the xDS
server as an :class:`EnvoyView`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc
import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apis.metrics_server import MetricsServer
from scheduler.core import Scheduler
from scheduler.experiments import Experiments
from scheduler.load import LoadView
from scheduler.state import ModelState, ReplicaState

log = structlog.get_logger("meshserve.scheduler.metrics")

API_PREFIX = "/seldon.mlops.scheduler.Scheduler/"
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EnvoyView(Protocol):
    """What the metrics read from the xDS server (``xdsserver.server.XdsServer`` is one)."""

    @property
    def connected(self) -> list[str]: ...

    @property
    def stuck(self) -> list[str]: ...

    def on_reject(self, listener: Callable[[str, str, str], None]) -> Callable[[], None]: ...


class SchedulerMetrics(Collector):
    """Every scheduler metric over one registry (the composition root builds both)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        core: Scheduler,
        experiments: Experiments | None = None,
        envoys: EnvoyView | None = None,
        load: LoadView | None = None,
    ) -> None:
        self._registry = registry
        self._core = core
        self._experiments = experiments
        self._envoys = envoys
        self._load = load
        self._rejected = 0
        self._unsubscribe = envoys.on_reject(self._on_reject) if envoys is not None else None
        self._endpoint: MetricsServer | None = None
        self.api_seconds = Histogram(
            "meshserve_scheduler_api_seconds",
            "Duration of unary Scheduler API calls (LoadModel, UnloadModel, ...), by method and outcome",
            ["method", "outcome"],
            buckets=API_BUCKETS,
            registry=registry,
        )
        self.interceptor = ApiTimer(self.api_seconds)
        registry.register(self)

    def _on_reject(self, _type_url: str, _name: str, _message: str) -> None:
        self._rejected += 1

    async def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on ``host:port`` (0: none). A taken port is logged, not fatal: losing
        metrics must not stop the control plane."""
        if not port:
            return
        endpoint = MetricsServer(self._registry, host=host, port=port)
        try:
            await endpoint.start()
        except OSError as exc:
            log.error("cannot serve metrics; running without them", port=port, error=str(exc))
            return
        self._endpoint = endpoint
        log.info("serving metrics", url=endpoint.url)

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._endpoint is not None:
            await self._endpoint.close()
            self._endpoint = None

    def describe(self) -> Iterable[Metric]:
        return []  # collected on scrape

    def collect(self) -> Iterable[Metric]:
        yield from self._models()
        yield from self._servers()
        if self._experiments is not None:
            yield self._experiment_counts(self._experiments)
        if self._envoys is not None:
            yield from self._envoy_counts(self._envoys)
        if self._load is not None:
            yield from self._requests(self._load)

    def _models(self) -> Iterable[Metric]:
        models = {state: 0 for state in ModelState}
        replicas = {state: 0 for state in ReplicaState}
        versions = 0
        for record in self._core.models.values():
            if record.versions:
                models[record.latest.state] += 1
            for version in record.versions:
                versions += 1
                for status in version.replicas.values():
                    replicas[status.state] += 1
        by_state = GaugeMetricFamily(
            "meshserve_scheduler_models", "Models by the state of their latest version", labels=["state"]
        )
        for state, count in models.items():
            by_state.add_metric([state.value], count)
        by_replica = GaugeMetricFamily(
            "meshserve_scheduler_model_replicas",
            "Model version replicas (a version on one server replica) by state",
            labels=["state"],
        )
        for replica_state, count in replicas.items():
            by_replica.add_metric([replica_state.value], count)
        kept = GaugeMetricFamily(
            "meshserve_scheduler_model_versions", "Model versions kept (live and recent history)"
        )
        kept.add_metric([], versions)
        return [by_state, by_replica, kept]

    def _servers(self) -> Iterable[Metric]:
        servers = GaugeMetricFamily("meshserve_scheduler_servers", "Servers known to the scheduler")
        replicas = GaugeMetricFamily(
            "meshserve_scheduler_server_replicas",
            "Server replicas by whether their agent is connected",
            labels=["server", "state"],
        )
        expected = GaugeMetricFamily(
            "meshserve_scheduler_server_expected_replicas",
            "Replicas a Server resource declares (absent for servers only agents registered)",
            labels=["server"],
        )
        loaded = GaugeMetricFamily(
            "meshserve_scheduler_replica_loaded_models",
            "Model versions Loaded or Available on each server replica",
            labels=["server", "server_replica"],
        )
        available = GaugeMetricFamily(
            "meshserve_scheduler_replica_available_memory_bytes",
            "Free memory each replica's agent last reported",
            labels=["server", "server_replica"],
        )
        all_servers = self._core.servers
        servers.add_metric([], len(all_servers))
        for name, server in sorted(all_servers.items()):
            connected = sum(1 for replica in server.replicas.values() if replica.connected)
            replicas.add_metric([name, "connected"], connected)
            replicas.add_metric([name, "disconnected"], len(server.replicas) - connected)
            if server.expected_replicas >= 0:
                expected.add_metric([name], server.expected_replicas)
            counts = self._core.loaded_per_replica(name)
            for idx, replica in sorted(server.replicas.items()):
                loaded.add_metric([name, str(idx)], counts.get(idx, 0))
                available.add_metric([name, str(idx)], replica.available_memory)
        return [servers, replicas, expected, loaded, available]

    @staticmethod
    def _experiment_counts(experiments: Experiments) -> Metric:
        active = 0
        for name in experiments.experiments:
            with contextlib.suppress(LookupError):  # no status computed yet: not active
                active += experiments.status(name).active
        family = GaugeMetricFamily(
            "meshserve_scheduler_experiments", "Experiments by whether they are active", labels=["state"]
        )
        family.add_metric(["active"], active)
        family.add_metric(["inactive"], len(experiments.experiments) - active)
        return family

    def _envoy_counts(self, envoys: EnvoyView) -> Iterable[Metric]:
        connected = GaugeMetricFamily("meshserve_scheduler_envoys_connected", "Envoys on the xDS stream")
        connected.add_metric([], len(envoys.connected))
        stuck = GaugeMetricFamily(
            "meshserve_scheduler_envoys_stuck",
            "Connected Envoys dropped from the ACK quorum because they stopped acknowledging",
        )
        stuck.add_metric([], len(envoys.stuck))
        rejected = CounterMetricFamily(
            "meshserve_scheduler_xds_rejected_resources",
            "Resources an Envoy rejected (NACKed) on their own; each fails its model with Envoy's reason",
        )
        rejected.add_metric([], self._rejected)
        return [connected, stuck, rejected]

    def _requests(self, load: LoadView) -> Iterable[Metric]:
        """Envoy's load reports: in flight per model version (and replica), completed totals."""
        model = GaugeMetricFamily(
            "meshserve_scheduler_model_requests_in_flight",
            "Requests Envoy has outstanding to a model version (latest load report of every Envoy; "
            "only the versions that autoscale are reported)",
            labels=["model_internal"],
        )
        for target, count in sorted(load.in_flight().items()):
            model.add_metric([target], count)
        replicas = {
            replica.endpoint: (name, str(idx))
            for name, server in self._core.servers.items()
            for idx, replica in server.replicas.items()
        }
        replica = GaugeMetricFamily(
            "meshserve_scheduler_replica_requests_in_flight",
            "Requests Envoy has outstanding to a model version on one replica (versions that autoscale)",
            labels=["model_internal", "server", "server_replica"],
        )
        for (target, endpoint), count in sorted(load.in_flight_by_replica().items(), key=str):
            if endpoint in replicas:
                replica.add_metric([target, *replicas[endpoint]], count)
        completed = CounterMetricFamily(
            "meshserve_scheduler_model_requests_completed",
            "Requests Envoy finished for a model version (answered or failed), as its load reports count "
            "(versions that autoscale)",
            labels=["model_internal"],
        )
        for target, count in sorted(load.completed().items()):
            completed.add_metric([target], count)
        return [model, replica, completed]


class ApiTimer(grpc.aio.ServerInterceptor):
    """Times each unary call of the Scheduler API; every other RPC passes through untouched."""

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or not method.startswith(API_PREFIX):
            return handler
        return handler._replace(unary_unary=self._timed(method.removeprefix(API_PREFIX), handler.unary_unary))

    def _timed(self, method: str, behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        ok = self._histogram.labels(method, "ok")
        failed = self._histogram.labels(method, "error")

        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            try:
                response = await behaviour(request, context)
            except BaseException:
                failed.observe(time.perf_counter() - started)
                raise
            ok.observe(time.perf_counter() - started)
            return response

        return timed
