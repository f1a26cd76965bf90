"""Prometheus exposition on the event loop: ``GET /metrics`` from an aiohttp server (docs/metrics.md).

Shared by the agent and the scheduler. Not prometheus_client's own HTTP server, which runs a
thread that would read state owned by the event loop. Each process builds one
``CollectorRegistry`` in its composition root and hands it here; the global registry is not used.
Collectors read state when a scrape arrives, so between scrapes the metrics cost nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

METRICS_PATH = "/metrics"
READY_PATH = "/ready"
BeforeScrape = Callable[[], Awaitable[None]]
ReadyCheck = Callable[[], bool]


class MetricsServer:
    """Serves one registry on ``host:port`` (port 0: any free port; see :attr:`port`).

    ``before_scrape`` runs before each exposition, e.g. to refresh data a synchronous collector
    then reads (the agent fetches MLServer's metrics there); it must not raise. With ``ready``,
    ``GET /ready`` answers 200 while it returns True and 503 otherwise (a supervisor's probe).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        before_scrape: BeforeScrape | None = None,
        ready: ReadyCheck | None = None,
    ) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._before_scrape = before_scrape
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics)
        if self._ready is not None:
            app.router.add_get(READY_PATH, self._readiness)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}{METRICS_PATH}"

    async def _metrics(self, _request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    async def _readiness(self, _request: web.Request) -> web.Response:
        assert self._ready is not None  # the route exists only with a check
        ready = self._ready()
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")
