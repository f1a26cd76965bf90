"""Where the agent learns which models have requests in flight, and when each was last used.

Requests reach MLServer from Envoy directly (decision 0003): the agent sees neither their start nor
their end. Real signals stand in, all read only when an eviction must choose a victim:

- **In flight**, from each Envoy's admin (``--envoy-admin-urls``; ``unix:<path>`` for a socket), by
  the clusters that serve a model version (decision 0008):
  - a version with clusters of its own (``iris_1_http``, ``iris_1_grpc``: it autoscales, or it is on
    an overcommitting replica, which today is every version an agent may evict) has an exact gauge,
    ``cluster.iris_1_http.upstream_rq_active``;
  - a version that shares its replica set's clusters has its routes' counters,
    ``vhost.seldon_service.route.iris_1_http.upstream_rq_total`` minus ``upstream_rq_completed``.
    That difference is never below the requests in flight, but a request the client abandoned (or
    an attempt reset mid-way) is never "completed", so it can stay above them for good. So it is
    read only while this replica is busy: Envoy's per-host ``rq_active`` for this MLServer's ports
    (admin ``/clusters``, summed over every cluster) at zero means nothing is in flight here at all.
  Both count requests to the version on any replica, which errs on the safe side. Reading
  ``/clusters`` and then ``/stats`` leaves a window for a request that starts between the two (as
  there is one between the check and the unload): a request that then finds the model gone is
  answered "not found" and retried by Envoy on this agent's reload listener (decision 0014).
- **Last used**: MLServer's own per-model request counters (its ``/metrics``, already read for the
  agent's inference metrics); a model whose count moved since the last look was used since.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import aiohttp
from structlog.typing import FilteringBoundLogger

from agent.metrics import MLServerScraper
from agent.state import ReplicaState

ADMIN_TIMEOUT_S = 2.0
# ``cluster.<versioned name>_<http|grpc>.upstream_rq_active: <n>`` in Envoy's text /stats.
_ACTIVE = re.compile(r"^cluster\.(?P<served>[^.\s]+)_(?:http|grpc)\.upstream_rq_active: (?P<count>\d+)$")
# ``vhost.seldon_service.route.<versioned name>_<http|grpc>.upstream_rq_<total|completed>: <n>``.
_ROUTE = re.compile(
    r"^vhost\.seldon_service\.route\.(?P<served>[^.\s]+)_(?:http|grpc)"
    r"\.upstream_rq_(?P<kind>total|completed): (?P<count>\d+)$"
)
ACTIVE_FILTER = (
    r"^(cluster\.[^.]+_(http|grpc)\.upstream_rq_active"
    r"|vhost\.seldon_service\.route\.[^.]+_(http|grpc)\.upstream_rq_(total|completed))$"
)
# ``<cluster>::<host>:<port>::rq_active::<n>`` in Envoy's text /clusters (one line per host and stat).
_HOST_ACTIVE = re.compile(r"^[^:\s]+::(?P<host>[^\s]+):(?P<port>\d+)::rq_active::(?P<count>\d+)$")


def parse_active(text: str) -> dict[str, int]:
    """Requests in flight per versioned name from clusters of its own, summed over REST and gRPC."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _ACTIVE.match(line.strip())
        if match is not None:
            served = match["served"]
            counts[served] = counts.get(served, 0) + int(match["count"])
    return counts


def parse_routes(text: str) -> dict[str, int]:
    """Per versioned name, its routes' requests sent minus completed (never below those in flight)."""
    sent: dict[str, int] = {}
    for line in text.splitlines():
        match = _ROUTE.match(line.strip())
        if match is not None:
            sign = 1 if match["kind"] == "total" else -1
            sent[match["served"]] = sent.get(match["served"], 0) + sign * int(match["count"])
    return {served: max(0, count) for served, count in sent.items()}


def host_active(text: str, host: str, ports: Sequence[int]) -> int | None:
    """Requests in flight to ``host`` on ``ports``, over every cluster; None: Envoy lists no such
    host (it resolved a name, say), so this replica cannot be told idle."""
    total, seen = 0, False
    for line in text.splitlines():
        match = _HOST_ACTIVE.match(line.strip())
        if match is not None and match["host"] == host and int(match["port"]) in ports:
            seen = True
            total += int(match["count"])
    return total if seen else None


def in_flight(stats: str, clusters: str, host: str, ports: Sequence[int]) -> dict[str, int]:
    """One Envoy's view: exact where a version has clusters of its own, else its routes' count
    while this replica is busy (module docstring)."""
    counts = parse_routes(stats) if host_active(clusters, host, ports) != 0 else {}
    counts.update(parse_active(stats))
    return counts


class EnvoyInFlight:
    """In-flight requests per model version on this replica, summed over every Envoy's admin."""

    def __init__(
        self, urls: Sequence[str], *, host: str, ports: Sequence[int], logger: FilteringBoundLogger
    ) -> None:
        self._urls = list(urls)
        self._host = host
        self._ports = tuple(ports)
        self._log = logger

    async def active(self) -> dict[str, int] | None:
        total: dict[str, int] = {}
        for url in self._urls:
            try:
                clusters = await _admin_get(url, "/clusters", {})
                stats = await _admin_get(url, "/stats", {"filter": ACTIVE_FILTER})
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._log.warning("Envoy admin did not answer; no eviction now", url=url, error=str(exc))
                return None
            for served, count in in_flight(stats, clusters, self._host, self._ports).items():
                total[served] = total.get(served, 0) + count
        return total


async def _admin_get(url: str, path: str, params: dict[str, str]) -> str:
    if url.startswith("unix:"):
        connector: aiohttp.BaseConnector | None = aiohttp.UnixConnector(path=url.removeprefix("unix:"))
        base = "http://envoy"
    else:
        connector, base = None, url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        session.get(f"{base}{path}", params=params) as response,
    ):
        response.raise_for_status()
        return await response.text()


class UsageTracker:
    """Marks a model used when MLServer's request count for it moved since the last look."""

    def __init__(self, scraper: MLServerScraper, state: ReplicaState) -> None:
        self._scraper = scraper
        self._state = state
        self._seen: dict[str, float] | None = None  # None until the first look

    async def refresh(self) -> None:
        await self._scraper.refresh()
        snapshot = self._scraper.snapshot
        if snapshot is None:
            return
        counts: dict[str, float] = {}
        for (served, _method), totals in snapshot.items():
            counts[served] = counts.get(served, 0.0) + totals.success + totals.failure
        if self._seen is not None:
            for served, count in counts.items():
                if count != self._seen.get(served, 0.0):
                    self._state.touch(served)
        self._seen = counts
