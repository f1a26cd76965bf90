"""The scheduler's load view (scheduler/load.py) and the metrics read from it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from apis.load import LoadReport, ReplicaLoad
from apis.routing import Endpoint
from scheduler import load as load_module
from scheduler.config import parse_args
from scheduler.load import LoadView
from scheduler.metrics import SchedulerMetrics
from tests.scheduler.fakes import Harness
from tests.scheduler.test_metrics import of, scrape

A = Endpoint("10.0.0.1", 8080, 9500)
B = Endpoint("10.0.0.2", 8080, 9500)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def report(source: str, *loads: ReplicaLoad, interval_s: float = 1.0) -> LoadReport:
    return LoadReport(source=source, interval_s=interval_s, loads=loads)


def test_in_flight_adds_up_envoys_and_completed_accumulates() -> None:
    view = LoadView()
    view.on_load(report("e1", ReplicaLoad("iris_1", A, 2, 5), ReplicaLoad("iris_1", B, 1, 1)))
    view.on_load(report("e2", ReplicaLoad("iris_1", A, 3, 4)))
    assert view.in_flight_by_replica() == {("iris_1", A): 5, ("iris_1", B): 1}
    assert view.in_flight() == {"iris_1": 6}
    view.on_load(report("e1"))  # e1 went idle: its latest report replaces the one before
    assert view.in_flight() == {"iris_1": 3}
    assert view.completed() == {"iris_1": 10}
    view.on_load(report("e2"))
    assert view.in_flight() == {"iris_1": 0}  # still listed: a version reported once shows 0 when idle


def test_a_silent_envoy_stops_counting() -> None:
    clock = Clock()
    view = LoadView(clock)
    view.on_load(report("e1", ReplicaLoad("iris_1", A, 2, 0), interval_s=2.0))
    clock.now += 3 * 2.0 + 0.5
    assert view.in_flight() == {"iris_1": 2}
    clock.now += 1.0
    assert view.in_flight() == {"iris_1": 0}


def test_subscribers_hear_every_report_until_they_leave() -> None:
    view, heard = LoadView(), []

    class Subscriber:
        def on_load(self, report: LoadReport) -> None:
            heard.append(report.source)

    leave = view.subscribe(Subscriber())
    view.on_load(report("e1"))
    leave()
    view.on_load(report("e2"))
    assert heard == ["e1"]


def test_sources_and_versions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "MAX_SOURCES", 2)
    monkeypatch.setattr(load_module, "MAX_TARGETS", 2)
    clock = Clock()
    view = LoadView(clock)
    view.on_load(report("e1", ReplicaLoad("a_1", A, 1, 1), ReplicaLoad("b_1", A, 0, 1)))
    view.on_load(report("e2", ReplicaLoad("c_1", A, 0, 1)))
    view.on_load(report("e3", ReplicaLoad("a_1", A, 9, 9)))  # a third Envoy: refused
    assert view.completed() == {"a_1": 1, "b_1": 1}  # c_1 is one version too many
    assert view.in_flight_by_replica()[("a_1", A)] == 1
    clock.now += 10  # e1 and e2 go stale: room for e3
    view.on_load(report("e3", ReplicaLoad("a_1", A, 9, 9)))
    assert view.in_flight_by_replica() == {("a_1", A): 9}


async def test_metrics_show_in_flight_per_version_and_replica(harness: Harness) -> None:
    await harness.connect(memory=10_000_000)
    view = LoadView()
    registry = CollectorRegistry()
    metrics = SchedulerMetrics(registry, core=harness.scheduler, load=view)
    replica = harness.scheduler.servers["mlserver"].replicas[0].config
    served = Endpoint(replica.inferenceSvc, replica.inferenceHttpPort, replica.inferenceGrpcPort)
    view.on_load(report("e1", ReplicaLoad("iris_1", served, 4, 2), ReplicaLoad("iris_1", B, 1, 0)))
    samples = scrape(registry)
    assert samples[("meshserve_scheduler_model_requests_in_flight", of(model_internal="iris_1"))] == 5
    replica_series = "meshserve_scheduler_replica_requests_in_flight"
    assert samples[(replica_series, of(model_internal="iris_1", server="mlserver", server_replica="0"))] == 4
    # an endpoint no replica serves on (any more) has no replica series
    assert sum(1 for name, _ in samples if name == replica_series) == 1
    completed = ("meshserve_scheduler_model_requests_completed_total", of(model_internal="iris_1"))
    assert samples[completed] == 2
    await metrics.close()


@pytest.mark.parametrize("value", ["0", "0.05", "61", "soon"])
def test_the_report_interval_flag_is_bounded(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([f"--load-report-interval-seconds={value}"], env={})
    assert "load-report-interval-seconds" in capsys.readouterr().err


def test_the_report_interval_flag_takes_a_bounded_value() -> None:
    assert parse_args(["--load-report-interval-seconds=0.5"], env={}).load_report_interval_seconds == 0.5
