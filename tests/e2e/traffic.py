"""Continuous inference through Envoy (REST and gRPC, several models) with its figures: failed
requests, the longest gap between two successes of one stream, and latency percentiles.

Paced (each stream's client sends ``rate_per_stream`` requests a second) or closed-loop
(``rate_per_stream=None``: each of ``clients_per_stream`` clients sends again as soon as its answer
came, so the requests in flight follow the clients, as autoscaling tests need)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import grpc

from apis.v2_dataplane import v2_dataplane_pb2_grpc
from tests.e2e.conftest import IRIS_IN, Stack
from tests.e2e.test_serving_path import GRPC_IRIS

TIMEOUT_S = 5.0


@dataclass
class Stream:
    """One model over one protocol: when each success came, and each failure's clear status."""

    model: str
    protocol: str  # "rest" | "grpc"
    successes: list[float] = field(default_factory=list)
    failures: list[tuple[float, str]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def longest_gap(self, start: float, end: float) -> float:
        stamps = [start, *self.successes, end]
        return max(b - a for a, b in itertools.pairwise(stamps))


@dataclass
class Traffic:
    stack: Stack
    models: list[str]
    rate_per_stream: float | None = 8.0
    clients_per_stream: int = 1
    streams: list[Stream] = field(default_factory=list)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def failed(self) -> int:
        return sum(len(s.failures) for s in self.streams)

    @property
    def ok(self) -> int:
        return sum(len(s.successes) for s in self.streams)

    @property
    def failures(self) -> list[str]:
        return [f"{s.model}/{s.protocol} {reason}" for s in self.streams for _, reason in s.failures]

    def longest_gap(self) -> float:
        """The longest time any stream went without a success (from the start to the end of the load)."""
        return max(s.longest_gap(self.started, self.stopped or time.monotonic()) for s in self.streams)

    def p99(self) -> float:
        latencies = sorted(x for s in self.streams for x in s.latencies)
        return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0

    def rate(self) -> float:
        return self.ok / max(1e-9, (self.stopped or time.monotonic()) - self.started)

    def figure(self, what: str) -> str:
        line = (
            f"{what}: {self.ok} ok, {self.failed} failed, longest gap {self.longest_gap():.2f} s, "
            f"p99 {self.p99() * 1000:.0f} ms, {self.rate():.0f} req/s"
        )
        print(line)
        return line

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            grpc.aio.insecure_channel(f"127.0.0.1:{self.stack.config.http_port}") as channel,
        ):
            stub = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            self.streams = [Stream(m, p) for m in self.models for p in ("rest", "grpc")]
            self.started = time.monotonic()
            clients = [s for s in self.streams for _ in range(self.clients_per_stream)]
            await asyncio.gather(*(self._stream(s, session, stub, stop) for s in clients))
            self.stopped = time.monotonic()

    async def _stream(
        self,
        stream: Stream,
        session: aiohttp.ClientSession,
        stub: v2_dataplane_pb2_grpc.GRPCInferenceServiceAsyncStub,
        stop: asyncio.Event,
    ) -> None:
        interval = 0.0 if self.rate_per_stream is None else 1 / self.rate_per_stream
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            failure = await (
                self._rest(stream.model, session)
                if stream.protocol == "rest"
                else self._grpc(stream.model, stub)
            )
            done = time.monotonic()
            if failure is None:
                stream.successes.append(done)
                stream.latencies.append(done - started)
            else:
                stream.failures.append((done, failure))
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _rest(self, model: str, session: aiohttp.ClientSession) -> str | None:
        url = f"{self.stack.url}/v2/models/{model}/infer"
        try:
            async with session.post(url, json=IRIS_IN, headers={"seldon-model": model}) as response:
                body = await response.read()
                return None if response.status == 200 else f"HTTP {response.status} {body[:120]!r}"
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"{type(error).__name__}: {error}"

    async def _grpc(
        self, model: str, stub: v2_dataplane_pb2_grpc.GRPCInferenceServiceAsyncStub
    ) -> str | None:
        try:
            await stub.ModelInfer(GRPC_IRIS, metadata=(("seldon-model", model),), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            return f"gRPC {error.code().name} {(error.details() or '')[:120]}"
        return None


@contextlib.asynccontextmanager
async def traffic(
    stack: Stack, models: list[str], rate_per_stream: float | None = 8.0, clients_per_stream: int = 1
) -> AsyncIterator[Traffic]:
    """Load on ``models`` (REST and gRPC each) while the block runs."""
    load = Traffic(stack, models, rate_per_stream, clients_per_stream)
    stop = asyncio.Event()
    task = asyncio.create_task(load.run(stop))
    try:
        await asyncio.sleep(0.5)
        yield load
    finally:
        stop.set()
        await task


async def envoy_connected(stack: Stack) -> bool:
    """Envoy's admin says its xDS stream to the scheduler is up (``control_plane.connected_state``)."""
    url = f"http://127.0.0.1:{stack.config.envoy_admin_port}/stats?filter=control_plane.connected_state"
    try:
        async with stack.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return "control_plane.connected_state: 1" in await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return False


async def xds_connections(stack: Stack) -> int:
    """How many xDS connections Envoy has opened to the scheduler so far (its cluster's
    ``upstream_cx_total``): a new stream after a restart makes it grow."""
    url = f"http://127.0.0.1:{stack.config.envoy_admin_port}/stats?filter=meshserve_xds.upstream_cx_total"
    async with stack.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
        text = await response.text()
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if "upstream_cx_total" in line)


async def envoy_resynced(stack: Stack, connections: int) -> bool:
    """Envoy opened an xDS connection since it had ``connections``, and its stream is up."""
    try:
        return await xds_connections(stack) > connections and await envoy_connected(stack)
    except (aiohttp.ClientError, TimeoutError):
        return False


GAP_BOUND_S = 1.5  # with a replica serving throughout: ~0.1 s between successes is normal
P99_BOUND_S = 1.0  # no request waits long, even while the control plane changes or restarts


def assert_served(
    load: Traffic, what: str, *, gap_bound_s: float = GAP_BOUND_S, p99_bound_s: float = P99_BOUND_S
) -> str:
    """No failed request, no stream without a success for ``gap_bound_s``, p99 under ``p99_bound_s``;
    prints and returns the figure."""
    figure = load.figure(what)
    assert load.ok > 0, figure
    assert load.failed == 0, f"{figure}: {load.failures[:5]}"
    assert load.longest_gap() < gap_bound_s, figure
    assert load.p99() < p99_bound_s, figure
    return figure
