"""Envoy's Load Reporting Service (``envoy.service.load_stats.v3``), served on the xDS port.

Every Envoy opens one ``StreamLoadStats`` stream (``cluster_manager.load_stats_config`` in
``envoy/bootstrap.yaml``). The first message names the Envoy; the answer asks it for the clusters of a
:class:`~xdsserver.report_scope.ReportScope` (the scheduler's: model versions that autoscale; none
when autoscaling is off) with per-endpoint stats, every ``interval_s``. Each later message is one
report: per cluster and endpoint, requests in progress now and requests finished in the interval.
Envoy sends one every interval even when asked for no cluster (an empty one, still about 60 KB:
every message repeats Envoy's node); when the list can never fill (autoscaling off) the
composition root has them come every :data:`EMPTY_INTERVAL_S` instead.

When the scope's list moves, the stream answers the next report with the new list. Only then:
Envoy restarts its report timer on every answer, so an answer between reports would hold the next
report back; after a report it costs nothing. So each Envoy gets at most one update per interval,
and a burst of changes is one update (the scope debounces). Without a scope the answer asks for
every cluster (``send_all_clusters``): the baseline the benchmark compares with.

A report becomes one :class:`apis.load.LoadReport` for the scheduler's :class:`LoadListener`:
clusters are mapped back to the model version they serve and endpoints to the replica behind the
address (a :class:`ClusterDirectory`, the route publisher), REST and gRPC clusters of one version
are added together, and anything this scheduler did not publish is skipped. Envoy lists only
endpoints that had traffic in the interval, so a replica absent from a report was idle.

Bounded: streams (one per Envoy) up to :data:`MAX_STREAMS`, a report's clusters up to
:data:`MAX_REPORTED_CLUSTERS`, its size by the gRPC receive limit; a listener that raises is logged
and the stream goes on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import grpc
import structlog
from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
from google.protobuf import duration_pb2

from apis.limits import MAX_LOAD_REPORT_INTERVAL_S, MIN_LOAD_REPORT_INTERVAL_S
from apis.load import LoadListener, LoadReport, ReplicaLoad
from apis.routing import Endpoint
from xdsserver.report_scope import ReportScope
from xdsserver.routes import ClusterTarget

log = structlog.get_logger("meshserve.xds.load")
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_INTERVAL_S = 2.0
# One stream per Envoy: far above any real fleet, low enough that a runaway client cannot pile up.
MAX_STREAMS = 1_000
# Two clusters per model version; 100,000 model versions is 10 times the benchmarked scale.
MAX_REPORTED_CLUSTERS = 200_000
MAX_SOURCE_LENGTH = 256
# Asked for no cluster, Envoy still sends a message every interval, and each carries its node
# description (about 60 KB for Envoy 1.40: the list of its extensions). When the list can never
# fill (autoscaling off), the composition root asks for one this often (``empty_interval_s``).
EMPTY_INTERVAL_S = 30.0


class ClusterDirectory(Protocol):
    """Which model version and replicas a cluster serves (``xdsserver.routes.RoutePublisher``)."""

    def locate(self, cluster: str) -> ClusterTarget | None: ...


def check_interval(interval_s: float) -> float:
    if not MIN_LOAD_REPORT_INTERVAL_S <= interval_s <= MAX_LOAD_REPORT_INTERVAL_S:
        raise ValueError(
            f"load report interval must be between {MIN_LOAD_REPORT_INTERVAL_S} and "
            f"{MAX_LOAD_REPORT_INTERVAL_S} s, got {interval_s}"
        )
    return interval_s


def to_report(
    source: str, request: lrs_pb2.LoadStatsRequest, directory: ClusterDirectory, default_interval_s: float
) -> LoadReport:
    """One Envoy report as the scheduler sees it: per model version and replica, REST + gRPC."""
    totals: dict[tuple[str, Endpoint], list[int]] = {}
    interval_s = 0.0
    for stats in _bounded(request.cluster_stats):
        # Envoy lists every cluster, each with its localities; only endpoints that had traffic are
        # listed under them. Most clusters are idle at scale: skipped before any other work.
        busy = [locality for locality in stats.upstream_locality_stats if locality.upstream_endpoint_stats]
        if not busy:
            continue
        located = directory.locate(stats.cluster_name)
        if located is None:
            continue  # not ours (the xDS or loop-back cluster), or removed since Envoy counted
        interval_s = max(interval_s, _seconds(stats.load_report_interval))
        for endpoint, in_flight, completed in _endpoint_loads(busy, located):
            counts = totals.setdefault((located.target, endpoint), [0, 0])
            counts[0] += in_flight
            counts[1] += completed
    loads = tuple(
        ReplicaLoad(target=target, endpoint=endpoint, in_flight=in_flight, completed=completed)
        for (target, endpoint), (in_flight, completed) in totals.items()
    )
    return LoadReport(source=source, interval_s=interval_s or default_interval_s, loads=loads)


def _bounded(clusters: Iterable[load_report_pb2.ClusterStats]) -> Iterable[load_report_pb2.ClusterStats]:
    for index, stats in enumerate(clusters):
        if index >= MAX_REPORTED_CLUSTERS:
            log.warning("load report truncated", clusters_kept=MAX_REPORTED_CLUSTERS)
            return
        yield stats


def _endpoint_loads(
    localities: Iterable[load_report_pb2.UpstreamLocalityStats], located: ClusterTarget
) -> Iterable[tuple[Endpoint, int, int]]:
    for locality in localities:
        for endpoint_stats in locality.upstream_endpoint_stats:
            address = endpoint_stats.address.socket_address
            endpoint = located.by_address.get((address.address, address.port_value))
            if endpoint is None:
                continue  # a replica that left the cluster since Envoy counted
            completed = endpoint_stats.total_successful_requests + endpoint_stats.total_error_requests
            yield endpoint, endpoint_stats.total_requests_in_progress, completed


def _seconds(duration: duration_pb2.Duration) -> float:
    return max(0.0, duration.seconds + duration.nanos / 1e9)


class LoadStatsServer(lrs_pb2_grpc.LoadReportingServiceServicer):  # type: ignore[misc]
    """The LRS gRPC service: one stream per Envoy, each report converted and handed on."""

    def __init__(
        self,
        directory: ClusterDirectory,
        listener: LoadListener,
        *,
        scope: ReportScope | None,
        interval_s: float = DEFAULT_INTERVAL_S,
        empty_interval_s: float | None = None,
    ) -> None:
        self._directory = directory
        self._listener = listener
        self._scope = scope  # None: every cluster
        self._interval_s = check_interval(interval_s)
        # While the list is empty: an update can only ride back on a report, so a list that may
        # fill keeps the normal interval (None); one that never fills can be asked rarely.
        self._empty_interval_s = check_interval(empty_interval_s or interval_s)
        self._streams = 0
        self.reports = 0  # received since start, empty ones too (for tests and the benchmark)
        self.updates = 0  # answers sent after the first one, when the scope moved
        self.report_bytes = 0  # their serialized size as received

    @property
    def streams(self) -> int:
        return self._streams

    async def StreamLoadStats(
        self, request_iterator: AsyncIterator[lrs_pb2.LoadStatsRequest], context: Context
    ) -> AsyncIterator[lrs_pb2.LoadStatsResponse]:
        if self._streams >= MAX_STREAMS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {MAX_STREAMS} load streams")
        self._streams += 1
        try:
            source = ""
            asked = -1  # the scope generation this Envoy was last asked for
            async for request in request_iterator:
                if not source:
                    source = request.node.id[:MAX_SOURCE_LENGTH] or context.peer()[:MAX_SOURCE_LENGTH]
                    log.info("envoy reports load", node=source, interval_s=self._interval_s)
                    asked = self._generation()
                    yield self._ask()
                else:
                    self._hand_on(source, request)
                if self._generation() != asked:  # right after a report: no report held back
                    asked = self._generation()
                    self.updates += 1
                    yield self._ask()
        finally:
            self._streams -= 1

    def _generation(self) -> int:
        if self._scope is None:
            return 0
        self._scope.clusters()  # folds a settled change in
        return self._scope.generation

    def _ask(self) -> lrs_pb2.LoadStatsResponse:
        clusters = self._scope.clusters() if self._scope is not None else ()
        interval_s = self._interval_s
        if self._scope is not None and not clusters:
            interval_s = max(interval_s, self._empty_interval_s)
        interval = duration_pb2.Duration()
        interval.FromNanoseconds(round(interval_s * 1e9))
        if self._scope is None:
            return lrs_pb2.LoadStatsResponse(
                send_all_clusters=True, load_reporting_interval=interval, report_endpoint_granularity=True
            )
        return lrs_pb2.LoadStatsResponse(
            clusters=clusters,
            load_reporting_interval=interval,
            report_endpoint_granularity=True,
        )

    def _hand_on(self, source: str, request: lrs_pb2.LoadStatsRequest) -> None:
        self.reports += 1
        self.report_bytes += request.ByteSize()
        if not request.cluster_stats:
            return  # nothing asked for (or nothing yet): the message only carries Envoy's node
        try:
            self._listener.on_load(to_report(source, request, self._directory, self._interval_s))
        except Exception:  # a listener's bug must not cut Envoy's reports off
            log.exception("load listener failed", node=source)
