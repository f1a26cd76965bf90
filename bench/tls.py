"""Figure: the control plane with and without mutual TLS (``meshserve up --tls``), side by side.

Two stacks running at once (scheduler, Envoy, MLServer, agent; the second with ``tls=True``: every
scheduler port mTLS, Envoy's xDS client included); each measurement alternates between them:

- a unary call on the Scheduler API port (gRPC health ``Check``) over one open channel: per-call cost;
- a fresh channel per call (connect + handshake + ``Check``): what a new CLI command or a reconnecting
  agent pays;
- time to route as in figure 2: LoadModel returning → the first HTTP 200 through Envoy, for fresh
  model names (LOAD_MODEL to the agent, LOADED back, clusters + scope over xDS: every control hop
  crosses a TLS link when TLS is on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apis import tls
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from bench import payloads
from bench.loadgen import median, percentile
from bench.mesh import Mesh, bench_config, start_mesh
from bench.procs import processes
from bench.report import Goal, Section, Table
from samples import train

POLL_INTERVAL_S = 0.002


@dataclass
class Variant:
    label: str
    names: list[str] = field(default_factory=list)
    call_us: list[float] = field(default_factory=list)
    connect_ms: list[float] = field(default_factory=list)
    route_ms: list[float] = field(default_factory=list)
    control_ms: list[float] = field(default_factory=list)  # route_ms - the agent's own load


async def run(work: Path, quick: bool = False) -> Section:
    calls, connects, models = (200, 20, 3) if quick else (2000, 100, 12)
    started = time.monotonic()
    train.ensure_artifacts()
    plain, secure = Variant("plain text (default)"), Variant("mutual TLS (`--tls`)")
    with processes(work / "logs") as group:
        meshes = {}
        for variant, tls_on in ((plain, False), (secure, True)):
            meshes[variant.label] = await start_mesh(
                group,
                bench_config(work / ("tls" if tls_on else "plain"), tls=tls_on),
                ("scheduler", "envoy", "mlserver", "agent"),
            )
        await _measure(meshes, [plain, secure], calls, connects, models)
        for variant in (plain, secure):
            loads = _agent_loads(meshes[variant.label].procs["agent"].log.read_text())
            variant.control_ms = [
                total - loads.get(name, float("nan"))
                for name, total in zip(variant.names, variant.route_ms, strict=True)
            ]
    section = Section(
        key="tls",
        title="Control plane with and without TLS",
        intro=(
            "Two stacks side by side in one run, without and with `meshserve up --tls` (mutual TLS on the "
            "Scheduler API, the AgentService and xDS; ECDSA P-256 certificates from the stack's own CA). "
            f"*Unary call*: {calls} gRPC health `Check`s on one open channel to the Scheduler API. "
            f"*New connection*: {connects} times a fresh channel, one `Check`, close (TCP + HTTP/2, plus the "
            f"TLS handshake with client certificate when on). *Time to route*: {models} fresh models, "
            "LoadModel returning → the first HTTP 200 through Envoy (as in figure 2; the agent's "
            "LOAD_MODEL and LOADED and Envoy's xDS all cross TLS links when on)."
        ),
        command="python -m bench --only tls",
    )
    table = Table(["", plain.label, secure.label, "difference (p50)"])
    rows = [
        ("unary call on an open channel", "call_us", "µs", 0),
        ("new connection + first call", "connect_ms", "ms", 2),
        ("time to route (LoadModel → first 200)", "route_ms", "ms", 1),
        ("of which control plane (time to route - agent load)", "control_ms", "ms", 1),
    ]
    for name, attribute, unit, digits in rows:
        a, b = getattr(plain, attribute), getattr(secure, attribute)
        table.rows.append(
            [
                name,
                _p50_p99(a, unit, digits),
                _p50_p99(b, unit, digits),
                f"{median(b) - median(a):+.{digits}f} {unit}",
            ]
        )
    section.tables.append(table)
    delta = median(secure.route_ms) - median(plain.route_ms)
    section.goals.append(
        Goal(
            "what mutual TLS adds to time to route (p50; the issue sets no bound)",
            f"{delta:+.1f} ms ({median(plain.route_ms):.1f} → {median(secure.route_ms):.1f} ms)",
            None,
            verdict_text="shown",
        )
    )
    section.notes += [
        "Cells are p50 / p99. Channels are long-lived in every meshserve process (agent, Envoy's xDS, the "
        "controller), so the handshake is paid once per connection; the per-call figure is what TLS costs "
        "in steady state.",
        "Both stacks run at once and the measurements alternate between them (one call, connection or "
        "model at a time), so a slower moment of the machine hits both columns alike.",
        "*Control plane* subtracts the agent's own load (artifact copy + MLServer loading the model, "
        "from its `model loaded duration_s` log line), which TLS does not touch; the rest is "
        "scheduling, LOAD_MODEL and LOADED over the agent's link, and clusters + scope over xDS. It can "
        "be negative: the agent starts loading before LoadModel has returned to the caller. With a dozen "
        "models its p50 moves by several ms from run to run; the direct figure is time to route.",
    ]
    section.seconds = time.monotonic() - started
    return section


def _p50_p99(values: list[float], unit: str, digits: int) -> str:
    return f"{median(values):.{digits}f} / {percentile(values, 99):.{digits}f} {unit}"


async def _measure(
    meshes: dict[str, Mesh], variants: list[Variant], calls: int, connects: int, models: int
) -> None:
    """Both stacks run at once and take turns, so drift on the machine hits both columns alike."""
    request = health_pb2.HealthCheckRequest()
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        stubs = {}
        for variant in variants:
            mesh = meshes[variant.label]
            channel = await stack.enter_async_context(
                tls.channel(mesh.scheduler_address, mesh.config.client_tls("cli"))
            )
            stubs[variant.label] = (
                health_pb2_grpc.HealthStub(channel),
                scheduler_pb2_grpc.SchedulerStub(channel),
            )
            for _ in range(50):  # warm-up: connection, first-call paths
                await stubs[variant.label][0].Check(request, timeout=5)
        for _ in range(calls):
            for variant in variants:
                sent = time.perf_counter()
                await stubs[variant.label][0].Check(request, timeout=5)
                variant.call_us.append((time.perf_counter() - sent) * 1e6)
        for _ in range(connects):
            for variant in variants:
                mesh = meshes[variant.label]
                sent = time.perf_counter()
                async with tls.channel(mesh.scheduler_address, mesh.config.client_tls("cli")) as fresh:
                    await health_pb2_grpc.HealthStub(fresh).Check(request, timeout=5)
                variant.connect_ms.append((time.perf_counter() - sent) * 1000)
        for variant in variants:  # the first load imports sklearn
            await _route(meshes[variant.label], stubs[variant.label][1], session, "warmup")
        for i in range(models):
            for variant in variants:
                name = f"m{i}"
                variant.names.append(name)
                variant.route_ms.append(
                    await _route(meshes[variant.label], stubs[variant.label][1], session, name)
                )


_LOADED = re.compile(
    r"""event=['"]?model loaded['"]?.*?\smodel=['"]?([^'"\s]+)['"]?.*?\sduration_s=['"]?([0-9.]+)"""
)


def _agent_loads(log: str) -> dict[str, float]:
    """Model name -> the agent's load time in ms (artifact copy + MLServer), from its log lines."""
    return {m.group(1): float(m.group(2)) * 1000 for m in _LOADED.finditer(log)}


async def _route(
    mesh: Mesh, stub: scheduler_pb2_grpc.SchedulerAsyncStub, session: aiohttp.ClientSession, name: str
) -> float:
    """LoadModel returning → the first 200 through Envoy, in ms; the model is unloaded afterwards."""
    url = f"{mesh.url}/v2/models/{name}/infer"
    headers = {"seldon-model": name, "content-type": "application/json"}
    await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=payloads.model(name)), timeout=10)
    returned = time.monotonic()
    while True:
        async with session.post(url, data=payloads.IRIS_REST, headers=headers) as response:
            await response.read()
            if response.status == 200:
                break
        if time.monotonic() > returned + 60:
            raise TimeoutError(f"{name} never answered 200 through Envoy")
        await asyncio.sleep(POLL_INTERVAL_S)
    elapsed = (time.monotonic() - returned) * 1000
    await stub.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=name)), timeout=10
    )
    return elapsed
