"""The scheduler's metrics (scheduler/metrics.py): read from the core's state on each scrape."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from scheduler.app import SchedulerApp
from scheduler.config import SchedulerConfig
from scheduler.metrics import SchedulerMetrics
from stack.ports import free_ports
from tests.experiments.test_model import message
from tests.scheduler.fakes import Event, Harness, model

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Envoys:
    """What the metrics read from the xDS server."""

    def __init__(self) -> None:
        self.connected = ["envoy-a", "envoy-b"]
        self.stuck = ["envoy-b"]
        self.listeners: list[Callable[[str, str, str], None]] = []

    def on_reject(self, listener: Callable[[str, str, str], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


def samples_of(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return samples_of(generate_latest(registry).decode())


def of(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


@pytest.fixture
async def metrics(harness: Harness) -> AsyncIterator[tuple[SchedulerMetrics, CollectorRegistry, Envoys]]:
    registry, envoys = CollectorRegistry(), Envoys()
    built = SchedulerMetrics(registry, core=harness.scheduler, experiments=harness.experiments, envoys=envoys)
    yield built, registry, envoys
    await built.close()
    assert envoys.listeners == []


async def test_models_and_replicas_by_state(
    harness: Harness, metrics: tuple[SchedulerMetrics, CollectorRegistry, Envoys]
) -> None:
    _, registry, _ = metrics
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_models", of(state="ModelAvailable"))] == 0
    assert samples[("meshserve_scheduler_servers", of())] == 0
    await harness.connect(memory=10_000_000)
    await harness.connect(idx=1, memory=10_000_000)
    await harness.load(model("iris"))
    await harness.load(model("iris2"))
    await harness.make_available("iris")
    await harness.load(model("broken", requirements=("tensorflow",)))
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_models", of(state="ModelAvailable"))] == 1
    assert samples[("meshserve_scheduler_models", of(state="ModelProgressing"))] == 1
    assert samples[("meshserve_scheduler_models", of(state="ScheduleFailed"))] == 1
    assert samples[("meshserve_scheduler_model_replicas", of(state="Available"))] == 1
    assert samples[("meshserve_scheduler_model_replicas", of(state="Loading"))] == 1
    assert samples[("meshserve_scheduler_model_versions", of())] == 3
    assert samples[("meshserve_scheduler_servers", of())] == 1
    assert samples[("meshserve_scheduler_server_replicas", of(server="mlserver", state="connected"))] == 2
    assert samples[("meshserve_scheduler_server_replicas", of(server="mlserver", state="disconnected"))] == 0
    loaded = "meshserve_scheduler_replica_loaded_models"
    for name in ("iris", "iris2"):  # iris is Available, iris2 still loading: each occupies its replica
        held = sum(
            1
            for m in ("iris", "iris2")
            if harness.version(m).replicas.keys() == harness.version(name).replicas.keys()
        )
        replica = str(next(iter(harness.version(name).replicas)))
        assert samples[(loaded, of(server="mlserver", server_replica=replica))] == held
    assert sum(v for (name, _), v in samples.items() if name == loaded) == 2
    memory = "meshserve_scheduler_replica_available_memory_bytes"
    assert samples[(memory, of(server="mlserver", server_replica="0"))] > 0
    assert ("meshserve_scheduler_server_expected_replicas", of(server="mlserver")) not in samples
    harness.scheduler.notify_servers([scheduler_pb2.ServerNotify(name="mlserver", expectedReplicas=2)])
    await harness.settle()
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_server_expected_replicas", of(server="mlserver"))] == 2


async def test_experiments_envoys_and_rejections(
    harness: Harness, metrics: tuple[SchedulerMetrics, CollectorRegistry, Envoys]
) -> None:
    _, registry, envoys = metrics
    await harness.connect()
    for name in ("iris", "iris2"):
        await harness.load(model(name))
        await harness.report(Event.LOADED, name, 1)
    await harness.envoy_applies()
    harness.experiments.start(message(default="iris"))
    await harness.settle()
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_experiments", of(state="active"))] == 0
    assert samples[("meshserve_scheduler_experiments", of(state="inactive"))] == 1
    await harness.envoy_applies()
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_experiments", of(state="active"))] == 1
    assert samples[("meshserve_scheduler_envoys_connected", of())] == 2
    assert samples[("meshserve_scheduler_envoys_stuck", of())] == 1
    assert samples[("meshserve_scheduler_xds_rejected_resources_total", of())] == 0
    for listener in list(envoys.listeners):
        listener("type.googleapis.com/envoy.config.cluster.v3.Cluster", "iris_1_http", "bad")
    assert scrape(registry)[("meshserve_scheduler_xds_rejected_resources_total", of())] == 1


async def test_the_composition_root_serves_metrics_and_times_load_model(tmp_path: Path) -> None:
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
        async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler_port}") as channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model("iris")))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model("Bad_Name")))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # still mapped
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            samples = samples_of(await response.text())
    finally:
        await app.stop(grace=0)
    count = "meshserve_scheduler_api_seconds_count"
    assert samples[(count, of(method="LoadModel", outcome="ok"))] == 1
    assert samples[(count, of(method="LoadModel", outcome="error"))] == 1
    assert samples[("meshserve_scheduler_models", of(state="ScheduleFailed"))] == 1
    assert samples[("meshserve_scheduler_envoys_connected", of())] == 0


async def test_a_taken_metrics_port_does_not_stop_the_scheduler(harness: Harness) -> None:
    (port,) = free_ports(1)
    first = SchedulerMetrics(CollectorRegistry(), core=harness.scheduler)
    second = SchedulerMetrics(CollectorRegistry(), core=harness.scheduler)
    await first.serve("127.0.0.1", port)
    try:
        await second.serve("127.0.0.1", port)  # logged, not raised
        await second.serve("127.0.0.1", 0)  # 0: none
    finally:
        await first.close()
        await second.close()
