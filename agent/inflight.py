"""Where the agent learns which models have requests in flight, and when each was last used.

Requests reach MLServer from Envoy directly (decision 0003): the agent sees neither their start nor
their end. Two real signals stand in, both read only when an eviction must choose a victim:

- **In flight**: Envoy's per-cluster gauge ``upstream_rq_active`` from its admin ``/stats``; a
  model version on a replica with a reload listener (this agent's, when it overcommits) has
  clusters of its own (``iris_1_http``, ``iris_1_grpc``; decision 0008), so a non-zero gauge means a
  request to that version is in flight (on some replica: the count is per cluster, which errs on
  the safe side). One admin URL per Envoy (``--envoy-admin-urls``; ``unix:<path>`` for a socket).
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
ACTIVE_FILTER = r"^cluster\.[^.]+_(http|grpc)\.upstream_rq_active$"


def parse_active(text: str) -> dict[str, int]:
    """Requests in flight per versioned name, summed over its HTTP and gRPC clusters."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _ACTIVE.match(line.strip())
        if match is not None:
            served = match["served"]
            counts[served] = counts.get(served, 0) + int(match["count"])
    return counts


class EnvoyInFlight:
    """In-flight requests per model version, summed over every Envoy's admin ``/stats``."""

    def __init__(self, urls: Sequence[str], *, logger: FilteringBoundLogger) -> None:
        self._urls = list(urls)
        self._log = logger

    async def active(self) -> dict[str, int] | None:
        total: dict[str, int] = {}
        for url in self._urls:
            try:
                text = await _admin_stats(url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._log.warning("Envoy admin did not answer; no eviction now", url=url, error=str(exc))
                return None
            for served, count in parse_active(text).items():
                total[served] = total.get(served, 0) + count
        return total


async def _admin_stats(url: str) -> str:
    if url.startswith("unix:"):
        connector: aiohttp.BaseConnector | None = aiohttp.UnixConnector(path=url.removeprefix("unix:"))
        base = "http://envoy"
    else:
        connector, base = None, url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
        session.get(f"{base}/stats", params={"filter": ACTIVE_FILTER}) as response,
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
