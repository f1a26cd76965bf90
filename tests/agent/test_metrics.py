"""The agent's metrics (agent/metrics.py) against a fake MLServer /metrics served by aiohttp."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import (
    AgentMetrics,
    MeteredOperator,
    MLServerScraper,
    parse_mlserver_metrics,
    served_metrics,
)
from agent.operations import Event
from agent.state import ReplicaState
from apis.metrics_server import MetricsServer
from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from tests.leakcheck import no_leaked_tasks

__all__ = ["no_leaked_tasks"]

# What MLServer 1.7.1 answers after four REST requests and one gRPC request to iris_1 (trimmed),
# plus a failed REST request for a model it does not know.
MLSERVER_TEXT = """\
# HELP model_infer_request_success_total Model infer request success count
# TYPE model_infer_request_success_total counter
model_infer_request_success_total{model="iris_1",version="None"} 4.0
model_infer_request_success_total{model="iris_1",version=""} 1.0
# HELP model_infer_request_success_created Model infer request success count
# TYPE model_infer_request_success_created gauge
model_infer_request_success_created{model="iris_1",version="None"} 1.7961381342440343e+09
# HELP model_infer_request_failure_total Model infer request failure count
# TYPE model_infer_request_failure_total counter
model_infer_request_failure_total{model="iris_1",version="None"} 0.0
model_infer_request_failure_total{model="iris_1",version=""} 0.0
model_infer_request_failure_total{model="nosuch",version="None"} 2.0
# HELP model_infer_request_duration Model infer request duration
# TYPE model_infer_request_duration summary
model_infer_request_duration_count{model="iris_1",version="None"} 4.0
model_infer_request_duration_sum{model="iris_1",version="None"} 0.82
model_infer_request_duration_count{model="iris_1",version=""} 1.0
model_infer_request_duration_sum{model="iris_1",version=""} 0.0008
model_infer_request_duration_sum{model="nosuch",version="None"} 0.001
# HELP rest_server_requests_total Total number of requests
# TYPE rest_server_requests_total counter
rest_server_requests_total{method="POST",path="/v2/models/{model_name}/infer",status_code="200"} 4.0
"""
MEMORY = 1_000_000
log = structlog.get_logger("tests.agent.metrics")


def model_version(name: str, version: int = 1, memory: int = 100_000) -> agent_pb2.ModelVersion:
    return agent_pb2.ModelVersion(
        model=scheduler_pb2.Model(
            meta=scheduler_pb2.MetaData(name=name), modelSpec=scheduler_pb2.ModelSpec(memoryBytes=memory)
        ),
        version=version,
    )


@dataclass
class FakeMLServer:
    """MLServer's metrics endpoint: answers ``text`` (or ``status``), after ``delay_s``."""

    text: str = MLSERVER_TEXT
    status: int = 200
    delay_s: float = 0.0
    hits: int = 0
    url: str = ""
    _runner: web.AppRunner | None = field(default=None, repr=False)

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(text=self.text, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/metrics"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def mlserver() -> AsyncIterator[FakeMLServer]:
    server = FakeMLServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@dataclass
class Agent:
    state: ReplicaState
    metrics: AgentMetrics
    scraper: MLServerScraper
    endpoint: MetricsServer

    async def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the agent's /metrics, by (name, labels)."""
        async with aiohttp.ClientSession() as session, session.get(self.endpoint.url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
async def agent(mlserver: FakeMLServer) -> AsyncIterator[Agent]:
    registry = CollectorRegistry()
    state = ReplicaState(memory_bytes=MEMORY, overcommit_percentage=10)
    state.add(model_version("iris"))
    scraper = MLServerScraper(mlserver.url, timeout_s=0.5)
    metrics = AgentMetrics(registry, state=state, scraper=scraper, server="mlserver", replica=0)
    endpoint = MetricsServer(registry, host="127.0.0.1", port=0, before_scrape=metrics.before_scrape)
    await endpoint.start()
    try:
        yield Agent(state, metrics, scraper, endpoint)
    finally:
        await endpoint.close()
        await scraper.close()


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset({"server": "mlserver", "server_replica": "0", **values}.items())


def test_mlserver_counters_are_read_per_versioned_model_and_transport() -> None:
    totals = parse_mlserver_metrics(MLSERVER_TEXT)
    assert set(totals) == {("iris_1", "rest"), ("iris_1", "grpc"), ("nosuch", "rest")}
    rest = totals[("iris_1", "rest")]
    assert (rest.success, rest.failure, rest.seconds) == (4.0, 0.0, 0.82)
    assert totals[("iris_1", "grpc")].success == 1.0
    assert totals[("nosuch", "rest")].failure == 2.0
    assert parse_mlserver_metrics("") == {}


def test_a_version_named_by_the_request_is_counted_under_an_unknown_transport() -> None:
    text = 'model_infer_request_success_total{model="iris_1",version="3"} 7.0\n'
    assert parse_mlserver_metrics(text)[("iris_1", "unknown")].success == 7.0


async def test_inference_counters_carry_the_reference_labels(agent: Agent) -> None:
    samples = await agent.scrape()
    rest = labels(model="iris", model_internal="iris_1", method_type="rest", code="200")
    grpc = labels(model="iris", model_internal="iris_1", method_type="grpc", code="OK")
    assert samples[("seldon_model_infer_total", rest)] == 4.0
    assert samples[("seldon_model_infer_total", grpc)] == 1.0
    assert samples[("seldon_model_infer_seconds_total", rest)] == pytest.approx(0.82)
    assert samples[("seldon_model_infer_seconds_total", grpc)] == pytest.approx(0.0008)
    # A name the replica does not hold keeps MLServer's name; failures are code "error".
    failed = labels(model="nosuch", model_internal="nosuch", method_type="rest", code="error")
    assert samples[("seldon_model_infer_total", failed)] == 2.0
    assert samples[("seldon_model_aggregate_infer_total", labels(method_type="rest", code="200"))] == 4.0
    assert samples[("seldon_model_aggregate_infer_total", labels(method_type="rest", code="error"))] == 2.0
    assert samples[("meshserve_agent_mlserver_up", labels())] == 1.0


async def test_replica_state_memory_and_cache_counters(agent: Agent) -> None:
    agent.state.add(model_version("iris2", memory=250_000))
    samples = await agent.scrape()
    assert samples[("seldon_loaded_model_gauge", labels(model_internal="iris_1"))] == 1.0
    assert samples[("seldon_loaded_model_gauge", labels(model_internal="iris2_1"))] == 1.0
    assert samples[("seldon_loaded_model_memory_bytes_gauge", labels(model_internal="iris2_1"))] == 250_000
    assert samples[("seldon_server_replica_memory_capacity_bytes_gauge", labels())] == MEMORY
    assert samples[("seldon_server_replica_memory_capacity_overcommit_bytes_gauge", labels())] == 1_100_000
    assert samples[("meshserve_agent_available_memory_bytes", labels())] == 1_100_000 - 350_000
    assert samples[("seldon_cache_evict_count", labels())] == 0.0
    assert samples[("seldon_cache_miss_count", labels())] == 0.0
    agent.state.remove("iris2_1")
    samples = await agent.scrape()
    assert ("seldon_loaded_model_gauge", labels(model_internal="iris2_1")) not in samples


async def test_mlserver_is_read_at_most_once_a_second_and_once_for_concurrent_scrapes(
    mlserver: FakeMLServer,
) -> None:
    now = [100.0]
    scraper = MLServerScraper(mlserver.url, max_age_s=1.0, clock=lambda: now[0])
    try:
        await asyncio.gather(*(scraper.refresh() for _ in range(5)))
        assert mlserver.hits == 1
        now[0] += 0.5
        await scraper.refresh()
        assert mlserver.hits == 1
        now[0] += 0.6
        await scraper.refresh()
        assert mlserver.hits == 2
    finally:
        await scraper.close()


async def test_a_slow_or_failing_mlserver_drops_the_inference_series_only(
    agent: Agent, mlserver: FakeMLServer
) -> None:
    mlserver.delay_s = 0.8  # past the scraper's 0.5 s timeout; over before the next scrape
    async with asyncio.timeout(3):
        samples = await agent.scrape()
    assert not any(name == "seldon_model_infer_total" for name, _ in samples)
    assert samples[("meshserve_agent_mlserver_up", labels())] == 0.0
    assert samples[("meshserve_agent_mlserver_scrape_errors_total", labels())] == 1.0
    assert samples[("seldon_loaded_model_gauge", labels(model_internal="iris_1"))] == 1.0
    mlserver.delay_s, mlserver.status = 0.0, 500
    await asyncio.sleep(1.0)  # past the cache
    samples = await agent.scrape()
    assert samples[("meshserve_agent_mlserver_scrape_errors_total", labels())] == 2.0
    mlserver.status = 200
    await asyncio.sleep(1.0)
    samples = await agent.scrape()
    assert samples[("meshserve_agent_mlserver_up", labels())] == 1.0


async def test_loads_and_unloads_are_counted_and_timed(agent: Agent) -> None:
    # Neither path below reaches MLServer or the repository: "already loaded" and a bad name.
    nothing = cast(Any, None)
    operator = MeteredOperator(
        metrics=agent.metrics, mlserver=nothing, repository=nothing, state=agent.state, logger=log
    )
    assert (await operator.load(model_version("iris"))).event == Event.LOADED
    assert (await operator.load(model_version("Bad_Name"))).event == Event.LOAD_FAILED
    assert (await operator.unload(model_version("Bad_Name"))).event == Event.UNLOAD_FAILED
    samples = await agent.scrape()
    assert samples[("seldon_load_model_counter", labels())] == 1.0
    assert samples[("seldon_unload_model_counter", labels())] == 0.0
    ops = "meshserve_agent_operations_total"
    assert samples[(ops, labels(operation="load", outcome="ok"))] == 1.0
    assert samples[(ops, labels(operation="load", outcome="failed"))] == 1.0
    assert samples[(ops, labels(operation="unload", outcome="failed"))] == 1.0
    seconds = frozenset({"operation": "load", "outcome": "ok"}.items())
    assert samples[("meshserve_agent_operation_seconds_count", seconds)] == 1.0


async def test_an_operation_that_raises_counts_as_failed(agent: Agent) -> None:
    class Broken:
        busy: set[str] = set()

        def __contains__(self, _name: object) -> bool:
            raise RuntimeError("boom")

    operator = MeteredOperator(
        metrics=agent.metrics,
        mlserver=cast(Any, None),
        repository=cast(Any, None),
        state=cast(Any, Broken()),
        logger=log,
    )
    with pytest.raises(RuntimeError):
        await operator.load(model_version("iris"))
    samples = await agent.scrape()
    assert samples[("meshserve_agent_operations_total", labels(operation="load", outcome="failed"))] == 1.0


def taken_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, int(holder.getsockname()[1])


async def test_served_metrics_runs_on_when_its_port_is_taken(mlserver: FakeMLServer) -> None:
    holder, port = taken_port()
    events: list[str] = []

    def capture(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        events.append(str(event.get("event")))
        raise structlog.DropEvent

    logger = structlog.wrap_logger(structlog.PrintLogger(), processors=[capture])
    state = ReplicaState(memory_bytes=MEMORY, overcommit_percentage=0)
    with holder:
        async with served_metrics(
            CollectorRegistry(),
            state=state,
            server="mlserver",
            replica=0,
            mlserver_metrics_url=mlserver.url,
            host="127.0.0.1",
            port=port,
            logger=logger,
        ) as metrics:
            metrics.operation_done("load", ok=True, seconds=0.1)
    assert events == ["cannot serve metrics; running without them"]


async def test_served_metrics_serves_on_its_port(mlserver: FakeMLServer) -> None:
    holder, port = taken_port()
    holder.close()  # free again: the agent binds it
    registry = CollectorRegistry()
    state = ReplicaState(memory_bytes=MEMORY, overcommit_percentage=0)
    state.add(model_version("iris"))
    noop: Callable[..., Any] = structlog.get_logger("tests")
    async with (
        served_metrics(
            registry,
            state=state,
            server="mlserver",
            replica=3,
            mlserver_metrics_url=mlserver.url,
            host="127.0.0.1",
            port=port,
            logger=noop,  # type: ignore[arg-type]
        ),
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    assert 'seldon_model_infer_total{code="200",method_type="rest",model="iris"' in text
    assert 'server_replica="3"' in text
