"""The scheduler's view of requests in flight, from Envoy's load reports (``apis/load.py``).

:class:`LoadView` is the one :class:`LoadListener` the composition root hands to the load-reporting
edge. It keeps each Envoy's latest report (a report older than :data:`STALE_AFTER_INTERVALS`
intervals counts no more: that Envoy went away or stopped reporting), adds up requests completed
per model version, and passes every report on to its subscribers (the autoscaler). Metrics read it
on scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from apis.load import LoadListener, LoadReport
from apis.routing import Endpoint

log = structlog.get_logger("meshserve.scheduler.load")

# An Envoy's report stands until this many of its intervals (plus a second) have gone by.
STALE_AFTER_INTERVALS = 3
# Envoys whose latest report is kept, and model versions whose completed count is kept.
MAX_SOURCES = 1_000
MAX_TARGETS = 100_000


class LoadView:
    """Latest load per Envoy, completed totals per model version, and the fan-out to subscribers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latest: dict[str, tuple[float, LoadReport]] = {}  # source -> (received at, report)
        self._completed: dict[str, int] = {}  # versioned name -> requests completed since start
        self._subscribers: list[LoadListener] = []
        self._full_warned = False
        self._retained: frozenset[str] | None = None  # None: every version reported counts

    def subscribe(self, listener: LoadListener) -> Callable[[], None]:
        """``listener.on_load`` hears every report after this view took it in."""
        self._subscribers.append(listener)
        return lambda: self._subscribers.remove(listener)

    def on_load(self, report: LoadReport) -> None:
        if report.source not in self._latest and len(self._latest) >= MAX_SOURCES:
            self._drop_stale()
            if len(self._latest) >= MAX_SOURCES:
                log.warning("load report ignored: too many Envoys report", source=report.source)
                return
        self._latest[report.source] = (self._clock(), report)
        for load in report.loads:
            self._count(load.target, load.completed)
        for listener in list(self._subscribers):
            listener.on_load(report)

    def _count(self, target: str, completed: int) -> None:
        if self._retained is not None and target not in self._retained:
            return
        if target not in self._completed:
            if len(self._completed) >= MAX_TARGETS:
                if not self._full_warned:
                    log.warning("completed counts full: new model versions not counted", limit=MAX_TARGETS)
                    self._full_warned = True
                return
            self._completed[target] = 0
        self._completed[target] += completed

    def retain(self, targets: set[str]) -> None:
        """Only these model versions are reported from now on: forget the others' totals (their
        gauges would otherwise stand at 0 for good) and ignore them in reports sent before an Envoy
        heard of the change."""
        self._retained = frozenset(targets)
        for target in [t for t in self._completed if t not in targets]:
            del self._completed[target]

    def _fresh(self) -> list[LoadReport]:
        now = self._clock()
        return [
            report
            for received, report in self._latest.values()
            if now - received <= STALE_AFTER_INTERVALS * report.interval_s + 1.0
        ]

    def _drop_stale(self) -> None:
        fresh = {id(report) for report in self._fresh()}
        for source, (_, report) in list(self._latest.items()):
            if id(report) not in fresh:
                del self._latest[source]

    def in_flight_by_replica(self) -> dict[tuple[str, Endpoint], int]:
        """Requests in flight per (model version, replica), over every Envoy still reporting."""
        totals: dict[tuple[str, Endpoint], int] = {}
        for report in self._fresh():
            for load in report.loads:
                if self._retained is not None and load.target not in self._retained:
                    continue
                key = (load.target, load.endpoint)
                totals[key] = totals.get(key, 0) + load.in_flight
        return totals

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per model version; every version ever reported is present (0: idle)."""
        totals = dict.fromkeys(self._completed, 0)
        for (target, _), count in self.in_flight_by_replica().items():
            totals[target] = totals.get(target, 0) + count
        return totals

    def completed(self) -> dict[str, int]:
        """Requests completed per model version since the scheduler started (all Envoys)."""
        return dict(self._completed)
