"""Envoy's load reports (xdsserver/load_stats.py): conversion to LoadReport, bounds, the LRS stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
from google.protobuf import duration_pb2

from apis.load import LoadReport, ReplicaLoad
from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from tests.scheduler.fakes import FakeEnvoy
from xdsserver import load_stats
from xdsserver.cache import ResourceCache
from xdsserver.load_stats import LoadStatsServer, check_interval, to_report
from xdsserver.report_scope import SETTLE_S, ReportScope
from xdsserver.routes import RoutePublisher

A = Endpoint("10.0.0.1", 8080, 9500)
B = Endpoint("10.0.0.2", 8080, 9500)


@pytest.fixture
async def routes() -> AsyncIterator[RoutePublisher]:
    cache = ResourceCache()
    publisher = RoutePublisher(cache, FakeEnvoy(cache))
    publisher.publish(Route("iris", (Split("iris_1", WEIGHT_SCALE, (A, B), own_clusters=True),)))
    yield publisher
    publisher.close()


def endpoint_stats(endpoint: Endpoint, port: int, *, active: int, ok: int = 0, errors: int = 0) -> object:
    return load_report_pb2.UpstreamEndpointStats(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=endpoint.host, port_value=port)
        ),
        total_requests_in_progress=active,
        total_successful_requests=ok,
        total_error_requests=errors,
        total_issued_requests=ok + errors + active,
    )


def cluster(name: str, *endpoints: object, interval_s: int = 2) -> load_report_pb2.ClusterStats:
    return load_report_pb2.ClusterStats(
        cluster_name=name,
        upstream_locality_stats=[load_report_pb2.UpstreamLocalityStats(upstream_endpoint_stats=endpoints)],
        load_report_interval=duration_pb2.Duration(seconds=interval_s),
    )


def request(*clusters: load_report_pb2.ClusterStats, node: str = "envoy-1") -> lrs_pb2.LoadStatsRequest:
    return lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=node), cluster_stats=clusters)


async def test_rest_and_grpc_clusters_of_a_version_are_added_per_replica(routes: RoutePublisher) -> None:
    report = to_report(
        "envoy-1",
        request(
            cluster(
                "iris_1_http", endpoint_stats(A, 8080, active=2, ok=5), endpoint_stats(B, 8080, active=1)
            ),
            cluster("iris_1_grpc", endpoint_stats(A, 9500, active=1, ok=1, errors=2)),
        ),
        routes,
        1.0,
    )
    assert report.source == "envoy-1" and report.interval_s == 2.0
    assert set(report.loads) == {
        ReplicaLoad("iris_1", A, in_flight=3, completed=8),
        ReplicaLoad("iris_1", B, in_flight=1, completed=0),
    }


async def test_clusters_and_endpoints_not_published_are_skipped(routes: RoutePublisher) -> None:
    report = to_report(
        "envoy-1",
        request(
            cluster("meshserve_xds", endpoint_stats(A, 9002, active=1)),
            cluster("gone_1_http", endpoint_stats(A, 8080, active=1)),
            cluster("iris_1_http", endpoint_stats(Endpoint("10.9.9.9", 8080, 1), 8080, active=7)),
            # the gRPC port of a replica is not an address of its REST cluster
            cluster("iris_1_http", endpoint_stats(A, 9500, active=7)),
        ),
        routes,
        1.5,
    )
    assert report.loads == ()
    assert report.interval_s == 2.0  # from the one cluster that was ours


async def test_idle_clusters_count_nothing_and_a_report_of_only_idle_ones_takes_the_asked_interval(
    routes: RoutePublisher,
) -> None:
    # Envoy lists every cluster; one without traffic has its locality but no endpoint under it.
    idle = cluster("iris_1_http", interval_s=5)
    busy = cluster("iris_1_grpc", endpoint_stats(A, 9500, active=1), interval_s=2)
    assert to_report("e", request(idle), routes, 1.5) == LoadReport("e", 1.5, ())
    report = to_report("e", request(idle, busy), routes, 1.5)
    assert report.loads == (ReplicaLoad("iris_1", A, in_flight=1, completed=0),)
    assert report.interval_s == 2.0  # the window the counted endpoints were measured over


async def test_a_report_without_interval_takes_the_asked_one(routes: RoutePublisher) -> None:
    stats = cluster("iris_1_http", endpoint_stats(A, 8080, active=1))
    stats.ClearField("load_report_interval")
    assert to_report("e", request(stats), routes, 1.5).interval_s == 1.5


async def test_a_removed_route_leaves_the_directory(routes: RoutePublisher) -> None:
    assert routes.locate("iris_1_grpc") is not None
    routes.publish(Route("iris", ()))
    assert routes.locate("iris_1_grpc") is None
    assert (
        to_report("e", request(cluster("iris_1_http", endpoint_stats(A, 8080, active=1))), routes, 1).loads
        == ()
    )


async def test_report_clusters_are_bounded(routes: RoutePublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_stats, "MAX_REPORTED_CLUSTERS", 1)
    report = to_report(
        "e",
        request(
            cluster("iris_1_http", endpoint_stats(A, 8080, active=1)),
            cluster("iris_1_grpc", endpoint_stats(A, 9500, active=5)),
        ),
        routes,
        1,
    )
    assert report.loads == (ReplicaLoad("iris_1", A, in_flight=1, completed=0),)


@pytest.mark.parametrize("interval", [0.0, 0.05, 61.0, -1.0])
def test_interval_out_of_bounds_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="load report interval must be between"):
        check_interval(interval)


class Listener:
    def __init__(self, *, fail_first: bool = False) -> None:
        self.reports: list[LoadReport] = []
        self.fail_first = fail_first
        self.got = asyncio.Event()

    def on_load(self, report: LoadReport) -> None:
        self.reports.append(report)
        self.got.set()
        if self.fail_first and len(self.reports) == 1:
            raise RuntimeError("listener bug")


async def serve(servicer: LoadStatsServer) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    lrs_pb2_grpc.add_LoadReportingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_without_a_scope_the_stream_asks_for_every_cluster_and_survives_a_failing_listener(
    routes: RoutePublisher,
) -> None:
    listener = Listener(fail_first=True)
    servicer = LoadStatsServer(routes, listener, scope=None, interval_s=1.5)
    server, port = await serve(servicer)
    outgoing: asyncio.Queue[lrs_pb2.LoadStatsRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[lrs_pb2.LoadStatsRequest]:
        while (item := await outgoing.get()) is not None:
            yield item

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = lrs_pb2_grpc.LoadReportingServiceStub(channel).StreamLoadStats(requests())
            await outgoing.put(request())  # the first message names the Envoy
            answer = await asyncio.wait_for(call.read(), 10)
            assert answer.send_all_clusters and answer.report_endpoint_granularity
            assert answer.load_reporting_interval.ToNanoseconds() == 1_500_000_000
            for active in (1, 2):
                listener.got.clear()
                await outgoing.put(request(cluster("iris_1_http", endpoint_stats(A, 8080, active=active))))
                await asyncio.wait_for(listener.got.wait(), 10)
            assert [r.loads[0].in_flight for r in listener.reports] == [1, 2]
            assert {r.source for r in listener.reports} == {"envoy-1"}
            assert servicer.reports == 2 and servicer.report_bytes > 0 and servicer.streams == 1
            await outgoing.put(None)
            await asyncio.wait_for(call.wait_for_connection(), 10)
    finally:
        await server.stop(None)
    assert servicer.streams == 0


async def test_streams_are_bounded(routes: RoutePublisher, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_stats, "MAX_STREAMS", 0)
    server, port = await serve(LoadStatsServer(routes, Listener(), scope=None))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = lrs_pb2_grpc.LoadReportingServiceStub(channel).StreamLoadStats(iter([request()]))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(call.read(), 10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop(None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_stream_asks_for_the_scope_and_sends_a_moved_list_right_after_a_report(
    routes: RoutePublisher,
) -> None:
    targets: set[str] = set()
    clock = Clock()
    scope = ReportScope(lambda: targets, clock)
    listener = Listener()
    servicer = LoadStatsServer(routes, listener, scope=scope, interval_s=1.0, empty_interval_s=20.0)
    server, port = await serve(servicer)
    outgoing: asyncio.Queue[lrs_pb2.LoadStatsRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[lrs_pb2.LoadStatsRequest]:
        while (item := await outgoing.get()) is not None:
            yield item

    async def report(message: lrs_pb2.LoadStatsRequest) -> None:
        """Send one report and wait until the server took it in (no race with the scope's clock)."""
        received = servicer.reports
        await outgoing.put(message)
        for _ in range(1000):
            if servicer.reports > received:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("report not received within 10 s")

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = lrs_pb2_grpc.LoadReportingServiceStub(channel).StreamLoadStats(requests())
            await outgoing.put(request())
            first = await asyncio.wait_for(call.read(), 10)
            assert not first.send_all_clusters and list(first.clusters) == []  # nothing autoscales
            assert first.load_reporting_interval.ToNanoseconds() == 20_000_000_000  # empty: rarely
            targets.add("iris_1")
            scope.changed()
            await report(request())  # an empty report, before the change settled: no answer
            clock.now += SETTLE_S
            await report(request(cluster("iris_1_http", endpoint_stats(A, 8080, active=3))))
            update = await asyncio.wait_for(call.read(), 10)
            assert list(update.clusters) == ["iris_1_http", "iris_1_grpc"]
            assert update.report_endpoint_granularity and not update.send_all_clusters
            assert servicer.updates == 1
            assert update.load_reporting_interval.ToNanoseconds() == 1_000_000_000
            scope.changed()  # a change that moves no cluster: nothing is resent
            clock.now += SETTLE_S
            await report(request(cluster("iris_1_http", endpoint_stats(A, 8080, active=1))))
            targets.clear()
            scope.changed()
            clock.now += SETTLE_S
            await report(request())
            emptied = await asyncio.wait_for(call.read(), 10)
            assert list(emptied.clusters) == [] and not emptied.send_all_clusters
            assert servicer.updates == 2
            assert [r.loads[0].in_flight for r in listener.reports] == [3, 1]
            assert servicer.reports == 4, "empty reports count too (their bytes are a cost)"
            await outgoing.put(None)
            await asyncio.wait_for(call.wait_for_connection(), 10)
    finally:
        await server.stop(None)
