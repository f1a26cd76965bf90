"""The agent's Prometheus metrics, with the reference's names where meshserve has the data
(docs/metrics.md; ``seldon-control-plane.md`` §4.4).

Requests do not pass through the agent (Envoy talks to MLServer directly, decision 0003), so the
inference counters are MLServer's own, read from its metrics endpoint when Prometheus scrapes the
agent (at most once a second) and relabelled: ``model_internal`` is MLServer's ``model`` label (the
versioned name, ``iris_1``), ``model`` the model it belongs to (``iris``). Everything else is read
from the agent's replica state at scrape time; only load and unload operations are counted as
they happen. Nothing here runs on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.typing import FilteringBoundLogger

from agent.operations import Event, ModelOperator, Outcome
from agent.state import ReplicaState, model_cost, versioned_name
from apis import names
from apis.metrics_server import MetricsServer
from apis.mlops.agent import agent_pb2

SCRAPE_TIMEOUT_S = 1.0
SCRAPE_MAX_AGE_S = 1.0
# MLServer's per-model series (mlserver/handlers/dataplane.py, labels model and version).
_SUCCESS = "model_infer_request_success_total"
_FAILURE = "model_infer_request_failure_total"
_DURATION = "model_infer_request_duration_sum"
_WANTED = (_SUCCESS, _FAILURE, _DURATION)
# MLServer labels a request by the version it named: REST paths without one give Python's None
# ("None"), gRPC requests proto3's empty string. meshserve's routes name none (docs/metrics.md).
_METHOD_BY_VERSION = {"None": "rest", "": "grpc"}
_OK_CODE = {"rest": "200", "grpc": "OK"}
FAILED_CODE = "error"  # MLServer counts failures without their status code
OPERATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class InferTotals:
    """MLServer's counters for one versioned model and one transport."""

    success: float = 0.0
    failure: float = 0.0
    seconds: float = 0.0


InferKey = tuple[str, str]  # (versioned name, method_type)


def parse_mlserver_metrics(text: str) -> dict[InferKey, InferTotals]:
    """MLServer's per-model inference counters from its ``/metrics`` text, by (versioned name,
    method type). Only the three series needed are parsed (MLServer's page is mostly other series)."""
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_WANTED))
    totals: dict[InferKey, InferTotals] = {}
    for family in text_string_to_metric_families(wanted + "\n"):
        for sample in family.samples:
            model = sample.labels.get("model", "")
            if not model:
                continue
            method = _METHOD_BY_VERSION.get(sample.labels.get("version", ""), "unknown")
            entry = totals.setdefault((model, method), InferTotals())
            if sample.name == _SUCCESS:
                entry.success += sample.value
            elif sample.name == _FAILURE:
                entry.failure += sample.value
            elif sample.name == _DURATION:
                entry.seconds += sample.value
    return totals


class MLServerScraper:
    """Fetches MLServer's ``/metrics`` with a short timeout, at most once per ``max_age_s``.

    Concurrent scrapes share one fetch. A failed fetch leaves no snapshot (the inference series
    disappear until MLServer answers again, and ``meshserve_agent_mlserver_up`` is 0).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        max_age_s: float = SCRAPE_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_age_s = max_age_s
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._fetched_at: float | None = None
        self._inflight: asyncio.Future[None] | None = None
        self.snapshot: dict[InferKey, InferTotals] | None = None
        self.errors = 0

    async def refresh(self) -> None:
        if self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age_s:
            return
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        inflight = self._inflight
        try:
            await asyncio.shield(inflight)
        finally:
            if self._inflight is inflight and inflight.done():
                self._inflight = None

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self.url) as response:
                response.raise_for_status()
                text = await response.text()
            self.snapshot = parse_mlserver_metrics(text)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.snapshot = None
            self.errors += 1
        self._fetched_at = self._clock()

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None


class AgentMetrics(Collector):
    """Every agent metric: a collector over the replica state and the MLServer snapshot, plus the
    operation counts and durations (:class:`MeteredOperator` records them)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        state: ReplicaState,
        scraper: MLServerScraper,
        server: str,
        replica: int,
    ) -> None:
        self._state = state
        self._scraper = scraper
        self._labels = {"server": server, "server_replica": str(replica)}
        # (operation, outcome) -> count; outcome is "ok" or "failed".
        self._operations: dict[tuple[str, str], int] = {}
        self._seconds = Histogram(
            "meshserve_agent_operation_seconds",
            "How long loads and unloads took on this replica (fetching the artifact included)",
            ["operation", "outcome"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    @property
    def scraper(self) -> MLServerScraper:
        return self._scraper

    async def before_scrape(self) -> None:
        await self._scraper.refresh()

    def operation_done(self, operation: str, *, ok: bool, seconds: float) -> None:
        outcome = "ok" if ok else "failed"
        key = (operation, outcome)
        self._operations[key] = self._operations.get(key, 0) + 1
        self._seconds.labels(operation, outcome).observe(seconds)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on scrape; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        yield from self._inference()
        yield from self._replica()
        yield from self._operation_counts()

    # -- inference, from MLServer ------------------------------------------------------------------

    def _model_of(self, served: str) -> str:
        model_version = self._state.get(served)
        if model_version is not None:
            return model_version.model.meta.name
        return names.model_of(served) or served

    def _inference(self) -> Iterable[Metric]:
        keys = ["server", "server_replica", "model", "model_internal", "method_type", "code"]
        count = CounterMetricFamily(
            "seldon_model_infer", "Inference requests MLServer answered, by model and outcome", labels=keys
        )
        seconds = CounterMetricFamily(
            "seldon_model_infer_seconds",
            "Seconds MLServer spent on inference requests (failed ones included, on the success code)",
            labels=keys,
        )
        aggregate_keys = ["server", "server_replica", "method_type", "code"]
        aggregate = CounterMetricFamily(
            "seldon_model_aggregate_infer",
            "Inference requests on this replica, all models",
            labels=aggregate_keys,
        )
        aggregate_seconds = CounterMetricFamily(
            "seldon_model_aggregate_infer_seconds",
            "Seconds spent on inference on this replica, all models",
            labels=aggregate_keys,
        )
        up = GaugeMetricFamily(
            "meshserve_agent_mlserver_up",
            "1 when the last read of MLServer's metrics endpoint succeeded",
            labels=["server", "server_replica"],
        )
        errors = CounterMetricFamily(
            "meshserve_agent_mlserver_scrape_errors",
            "Failed reads of MLServer's metrics endpoint",
            labels=["server", "server_replica"],
        )
        server, replica = self._labels["server"], self._labels["server_replica"]
        snapshot = self._scraper.snapshot
        up.add_metric([server, replica], 0.0 if snapshot is None else 1.0)
        errors.add_metric([server, replica], float(self._scraper.errors))
        per_method: dict[str, InferTotals] = {}
        for (served, method), totals in sorted((snapshot or {}).items()):
            model, ok_code = self._model_of(served), _OK_CODE.get(method, "ok")
            count.add_metric([server, replica, model, served, method, ok_code], totals.success)
            seconds.add_metric([server, replica, model, served, method, ok_code], totals.seconds)
            if totals.failure:
                count.add_metric([server, replica, model, served, method, FAILED_CODE], totals.failure)
            summed = per_method.setdefault(method, InferTotals())
            summed.success += totals.success
            summed.failure += totals.failure
            summed.seconds += totals.seconds
        for method, totals in sorted(per_method.items()):
            ok_code = _OK_CODE.get(method, "ok")
            aggregate.add_metric([server, replica, method, ok_code], totals.success)
            aggregate_seconds.add_metric([server, replica, method, ok_code], totals.seconds)
            if totals.failure:
                aggregate.add_metric([server, replica, method, FAILED_CODE], totals.failure)
        return [count, seconds, aggregate, aggregate_seconds, up, errors]

    # -- replica state ---------------------------------------------------------------------------

    def _replica(self) -> Iterable[Metric]:
        server, replica = self._labels["server"], self._labels["server_replica"]
        per_model = ["server", "server_replica", "model_internal"]
        loaded = GaugeMetricFamily(
            "seldon_loaded_model_gauge",
            "Models in this replica's memory (1 per model version; evicted ones are not)",
            labels=per_model,
        )
        memory = GaugeMetricFamily(
            "seldon_loaded_model_memory_bytes_gauge",
            "Memory of each model version in memory, as declared in its spec (spec.memory)",
            labels=per_model,
        )
        evicted = GaugeMetricFamily(
            "seldon_evicted_model_memory_bytes_gauge",
            "Memory of each evicted model version (assigned, on disk, not in memory: overcommit)",
            labels=per_model,
        )
        for model_version in sorted(self._state.loaded_models(), key=versioned_name):
            served = versioned_name(model_version)
            cost = float(model_cost(model_version))
            if self._state.is_resident(served):
                loaded.add_metric([server, replica, served], 1.0)
                memory.add_metric([server, replica, served], cost)
            else:
                evicted.add_metric([server, replica, served], cost)
        per_replica = ["server", "server_replica"]
        capacity = GaugeMetricFamily(
            "seldon_server_replica_memory_capacity_bytes_gauge",
            "Memory this replica's models may use (--memory-bytes)",
            labels=per_replica,
        )
        capacity.add_metric([server, replica], float(self._state.memory_bytes))
        overcommit = GaugeMetricFamily(
            "seldon_server_replica_memory_capacity_overcommit_bytes_gauge",
            "Memory the scheduler may assign to this replica: capacity plus the overcommit percentage",
            labels=per_replica,
        )
        overcommit.add_metric([server, replica], float(self._state.capacity_bytes))
        available = GaugeMetricFamily(
            "meshserve_agent_available_memory_bytes",
            "Memory still free for assignment, as reported to the scheduler",
            labels=per_replica,
        )
        available.add_metric([server, replica], float(self._state.available_bytes()))
        return [loaded, memory, evicted, capacity, overcommit, available]

    # -- operations ------------------------------------------------------------------------------

    def _operation_counts(self) -> Iterable[Metric]:
        server, replica = self._labels["server"], self._labels["server_replica"]
        per_replica = ["server", "server_replica"]
        # The reference's names have no _total suffix; prometheus_client would add one to a
        # counter, so these four are exposed untyped under the exact names (docs/metrics.md).
        exact = {
            "seldon_load_model_counter": ("Models loaded", self._operations.get(("load", "ok"), 0)),
            "seldon_unload_model_counter": ("Models unloaded", self._operations.get(("unload", "ok"), 0)),
            "seldon_cache_evict_count": ("Models evicted from memory to make room", self._state.evictions),
            "seldon_cache_miss_count": ("Requests that found their model evicted", self._state.misses),
        }
        for name, (documentation, count) in exact.items():
            family = Metric(name, f"{documentation} (a counter)", "unknown")
            family.add_sample(name, {"server": server, "server_replica": replica}, float(count))
            yield family
        operations = CounterMetricFamily(
            "meshserve_agent_operations",
            "Loads and unloads this agent ran, by outcome",
            labels=[*per_replica, "operation", "outcome"],
        )
        for operation in ("load", "unload"):
            for outcome in ("ok", "failed"):
                value = float(self._operations.get((operation, outcome), 0))
                operations.add_metric([server, replica, operation, outcome], value)
        yield operations


class MeteredOperator(ModelOperator):
    """A :class:`ModelOperator` that records each load and unload in :class:`AgentMetrics`."""

    def __init__(self, *, metrics: AgentMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics

    async def load(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        return await self._metered("load", Event.LOADED, super().load(model_version))

    async def unload(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        return await self._metered("unload", Event.UNLOADED, super().unload(model_version))

    async def _metered(
        self, operation: str, success: agent_pb2.ModelEventMessage.Event.ValueType, run: Awaitable[Outcome]
    ) -> Outcome:
        started = time.perf_counter()
        try:
            outcome = await run
        except Exception:
            self._metrics.operation_done(operation, ok=False, seconds=time.perf_counter() - started)
            raise
        self._metrics.operation_done(
            operation, ok=outcome.event == success, seconds=time.perf_counter() - started
        )
        return outcome


@contextlib.asynccontextmanager
async def served_metrics(
    registry: CollectorRegistry,
    *,
    state: ReplicaState,
    server: str,
    replica: int,
    mlserver_metrics_url: str,
    host: str,
    port: int,
    logger: FilteringBoundLogger,
) -> AsyncIterator[AgentMetrics]:
    """The agent's metrics on ``registry``, served on ``host:port`` while the block runs.

    Port 0 serves nothing (the metrics are still kept). A port that is taken is logged and the
    agent runs on without its endpoint: losing metrics must not take the replica down.
    """
    scraper = MLServerScraper(mlserver_metrics_url)
    metrics = AgentMetrics(registry, state=state, scraper=scraper, server=server, replica=replica)
    endpoint = MetricsServer(registry, host=host, port=port, before_scrape=metrics.before_scrape)
    try:
        if port:
            try:
                await endpoint.start()
                logger.info("serving metrics", url=endpoint.url)
            except OSError as exc:
                logger.error("cannot serve metrics; running without them", port=port, error=str(exc))
        yield metrics
    finally:
        await endpoint.close()
        await scraper.close()
