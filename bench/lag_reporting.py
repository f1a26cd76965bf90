"""Figure - the cost of lag reporting (requests in flight per model) at 10,000 models.

Lean path, as ``bench/envoy_memory.py``: no agents or model servers. An in-process control plane
made of the scheduler's own parts (``XdsServer``, ``RoutePublisher``, the LRS ``LoadStatsServer``
and the scheduler's ``LoadView``) on one gRPC server, as ``scheduler/app.py`` composes them, and a
real Envoy (``--concurrency 1``) with ``envoy/bootstrap.yaml``. ``MODELS`` models are published as
routes (one version each on one of ``REPLICAS`` replicas: two clusters per model); the replicas are
a tiny aiohttp upstream in this process.

Variants, each a fresh Envoy and control plane:
- ``off``: the bootstrap without ``cluster_manager.load_stats_config``: nothing reported;
- ``lrs all``: the bootstrap as committed: Envoy's Load Reporting Service every ``INTERVAL_S``, all
  clusters (``send_all_clusters``, what the scheduler asked before decision 0015 was revised),
  per-endpoint stats, converted to ``LoadReport`` and taken in by ``LoadView``;
- ``lrs 100 autoscale`` / ``lrs none autoscale``: the same, but the answer lists only the clusters
  of ``SCOPED`` models (a ``ReportScope``, as the scheduler builds from the models that autoscale),
  or none (autoscaling off, the default);
- ``metrics-sink``: no LRS; instead Envoy's ``envoy.stat_sinks.metrics_service`` streams its stats
  every ``INTERVAL_S`` (``stats_flush_interval``) to a gRPC service here that only counts bytes
  (what it would have to decode is at least that much; xds-protos ships no stubs for it).

For each, two windows of ``WINDOW_S`` with no requests in flight: ``idle`` (no model ever called)
and ``after traffic`` (after one request to each of ``TOUCHED`` models, which makes their stats
"used" for the sink and puts their endpoints in the next LRS report). Measured per window: CPU
seconds per second of this process (the control plane) and of Envoy, and bytes per report. Rounds
interleave the variants; the table shows medians. The machine is shared and noisy: read ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import string
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.load_stats.v3 import lrs_pb2_grpc

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from bench import envoys
from bench.procs import Process, processes, wait_for
from bench.report import Goal, Section, Table
from scheduler.load import LoadView
from stack.config import StackConfig
from stack.envoy_bootstrap import ENVOY_DIR, XDS_CLUSTER
from stack.ports import free_ports
from xdsserver.cache import ResourceCache
from xdsserver.listener import LISTENER_NAME, data_plane_listener
from xdsserver.load_stats import EMPTY_INTERVAL_S, LoadStatsServer
from xdsserver.report_scope import ReportScope
from xdsserver.routes import RoutePublisher
from xdsserver.server import XdsServer
from xdsserver.types import CLUSTER, LISTENER

MODELS, QUICK_MODELS = 10_000, 1_000
REPLICAS = 4
TOUCHED, QUICK_TOUCHED = 1_000, 100
WINDOW_S, QUICK_WINDOW_S = 20.0, 5.0
ROUNDS, QUICK_ROUNDS = 2, 1
INTERVAL_S = 1.0
SETTLE_S = 3.0
SCOPED = 100  # models that autoscale in the scoped variant (all among the called ones)
LRS_ALL, LRS_SCOPED, LRS_NONE = "lrs all", f"lrs {SCOPED} autoscale", "lrs none autoscale"
LRS_VARIANTS = (LRS_ALL, LRS_SCOPED, LRS_NONE)
VARIANTS = ("off", *LRS_VARIANTS, "metrics-sink")
WINDOWS = ("idle", "after traffic")
METRICS_SERVICE = "envoy.service.metrics.v3.MetricsService"


@dataclass
class Window:
    control_cpu: float  # CPU s/s of this process
    envoy_cpu: float  # CPU s/s of Envoy
    reports: int
    report_bytes: int

    @property
    def bytes_per_report(self) -> float:
        return self.report_bytes / self.reports if self.reports else 0.0


@dataclass
class Counter:
    """Reports and their bytes, as received (LRS or the metrics sink)."""

    reports: int = 0
    report_bytes: int = 0


@dataclass
class Result:
    windows: dict[str, list[Window]] = field(default_factory=lambda: {w: [] for w in WINDOWS})
    in_flight_seen: int = 0  # LRS only: model versions LoadView heard of
    updates: int = 0  # LRS answers after the first (the scope is fixed here: none expected)


def bootstrap(variant: str, *, admin_port: int, xds_port: int) -> dict[str, Any]:
    text = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text()).substitute(
        node_id=f"bench-lag-{admin_port}",
        admin_address="127.0.0.1",
        admin_port=admin_port,
        xds_host="127.0.0.1",
        xds_port=xds_port,
    )
    config: dict[str, Any] = yaml.safe_load(text)
    if variant not in LRS_VARIANTS:
        config.get("cluster_manager", {}).pop("load_stats_config", None)
    if variant == "metrics-sink":
        config["stats_flush_interval"] = f"{INTERVAL_S}s"
        config["stats_sinks"] = [
            {
                "name": "envoy.stat_sinks.metrics_service",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                },
            }
        ]
    return config


def write_bootstrap(work: Path, variant: str, *, admin_port: int, xds_port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{variant.replace(' ', '-')}.json"
    path.write_text(json.dumps(bootstrap(variant, admin_port=admin_port, xds_port=xds_port)))
    return path


def metrics_sink(counter: Counter) -> grpc.GenericRpcHandler:
    """``MetricsService.StreamMetrics`` that counts the bytes of each message and decodes nothing."""

    async def stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        async for message in requests:
            counter.reports += 1
            counter.report_bytes += len(message)
        return b""  # StreamMetricsResponse has no fields

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_unary_rpc_method_handler(stream)
    return grpc.method_handlers_generic_handler(METRICS_SERVICE, {"StreamMetrics": handler})


async def upstream(ports: Sequence[int]) -> web.AppRunner:
    async def infer(request: web.Request) -> web.Response:
        return web.json_response({"model_name": request.match_info["name"], "outputs": []})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def one_run(work: Path, variant: str, models: int, touched: int, window_s: float) -> Result:
    ports = free_ports(REPLICAS + 2)
    replicas = [Endpoint("127.0.0.1", port, port) for port in ports[:REPLICAS]]
    envoy_port, admin_port = ports[REPLICAS:]
    cache = ResourceCache()
    xds = XdsServer(cache)
    publisher = RoutePublisher(cache, xds)
    view = LoadView()
    names = [f"m{i:05d}" for i in range(models)]
    scoped = {LRS_SCOPED: [f"{name}_1" for name in names[:SCOPED]], LRS_NONE: []}
    scope = ReportScope(lambda: scoped[variant]) if variant in scoped else None
    load_stats = LoadStatsServer(
        publisher,
        view,
        scope=scope,
        interval_s=INTERVAL_S,
        empty_interval_s=EMPTY_INTERVAL_S if variant == LRS_NONE else None,  # as scheduler/app.py when off
    )
    sink = Counter()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(xds, server)
    lrs_pb2_grpc.add_LoadReportingServiceServicer_to_server(load_stats, server)
    server.add_generic_rpc_handlers([metrics_sink(sink)])
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    listener = data_plane_listener(
        address="127.0.0.1", port=envoy_port, lua_code=(ENVOY_DIR / "seldon.lua").read_text()
    )
    cache.apply(upserts=[(LISTENER, LISTENER_NAME, listener)])
    # Clusters of their own, as the models whose load is reported have (decision 0008).
    published = [
        publisher.publish(
            Route(name, (Split(f"{name}_1", WEIGHT_SCALE, (replicas[i % REPLICAS],), own_clusters=True),))
        )
        for i, name in enumerate(names)
    ]
    config = write_bootstrap(work, variant, admin_port=admin_port, xds_port=xds_port)
    result = Result()
    runner = await upstream([e.http_port for e in replicas])
    try:
        with processes(work / "logs") as group:
            envoy = group.start(
                variant.replace(" ", "-"),
                envoys.envoy_argv(StackConfig().binary("envoy"), config, admin_port),
            )

            async def all_routed() -> bool:
                return all(f.done() for f in published) and len(cache.live(CLUSTER)) >= 2 * models

            await wait_for(all_routed, within=900, what=f"{variant}: {models} models ACKed", alive=[envoy])
            counter: Counter | LoadStatsServer = sink if variant == "metrics-sink" else load_stats
            await asyncio.sleep(SETTLE_S)
            result.windows["idle"].append(await measure(envoy, counter, window_s))
            async with aiohttp.ClientSession() as session:
                for name in names[:touched]:
                    async with session.post(
                        f"http://127.0.0.1:{envoy_port}/v2/models/{name}/infer",
                        data=b"{}",
                        headers={"seldon-model": name, "content-type": "application/json"},
                    ) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"{name}: HTTP {response.status} through Envoy")
            await asyncio.sleep(SETTLE_S)
            result.windows["after traffic"].append(await measure(envoy, counter, window_s))
            result.in_flight_seen = len(view.in_flight())
            result.updates = load_stats.updates
    finally:
        await runner.cleanup()
        publisher.close()
        await server.stop(0)
    return result


async def measure(envoy: Process, counter: Counter | LoadStatsServer, window_s: float) -> Window:
    reports, sent = counter.reports, counter.report_bytes
    control, proxy = time.process_time(), envoy.cpu_seconds_precise()
    await asyncio.sleep(window_s)
    return Window(
        control_cpu=(time.process_time() - control) / window_s,
        envoy_cpu=(envoy.cpu_seconds_precise() - proxy) / window_s,
        reports=counter.reports - reports,
        report_bytes=counter.report_bytes - sent,
    )


async def run(work: Path, quick: bool = False) -> Section:
    models = QUICK_MODELS if quick else MODELS
    touched = QUICK_TOUCHED if quick else TOUCHED
    window_s = QUICK_WINDOW_S if quick else WINDOW_S
    rounds = QUICK_ROUNDS if quick else ROUNDS
    started = time.monotonic()
    results: dict[str, list[Result]] = {v: [] for v in VARIANTS}
    for round_ in range(rounds):
        for variant in VARIANTS:
            result = await one_run(work / f"r{round_}", variant, models, touched, window_s)
            results[variant].append(result)
            idle = result.windows["idle"][-1]
            print(
                f"   {variant}: control {idle.control_cpu * 1000:.1f} ms/s, "
                f"Envoy {idle.envoy_cpu * 1000:.1f} ms/s, "
                f"{idle.reports} reports of {idle.bytes_per_report:,.0f} B (idle)",
                flush=True,
            )
    section = _section(models, touched, window_s, rounds, results)
    section.seconds = time.monotonic() - started
    return section


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _section(
    models: int, touched: int, window_s: float, rounds: int, results: dict[str, list[Result]]
) -> Section:
    section = Section(
        key="lag-reporting",
        title="Lag reporting at scale",
        intro=(
            f"Requests in flight per model version, reported by Envoy, at {models:,} models ({2 * models:,} "
            f"clusters, {REPLICAS} replicas), with no scheduler process: the scheduler's own xDS, LRS and "
            "LoadView objects on one in-process gRPC server and a real Envoy (`bench/lag_reporting.py`). "
            f"Reports every {INTERVAL_S:.0f} s. LRS asks for all clusters (`{LRS_ALL}`, the old answer), "
            f"for the clusters of {SCOPED} models that autoscale (`{LRS_SCOPED}`, all of them among the "
            f"called ones) or for none (`{LRS_NONE}`: autoscaling off, the default). "
            f"Each window is {window_s:.0f} s with nothing in flight: "
            f"`idle` (no model ever called) and `after traffic` (after one request to each of {touched:,} "
            f"models). {rounds} interleaved rounds, medians; CPU as ms per second (ms/s) on a shared "
            "2-core machine, so compare within a column."
        ),
        command="python -m bench --only lag-reporting",
    )
    off = {w: _median([r.windows[w][0].control_cpu for r in results["off"]]) for w in WINDOWS}
    envoy_off = {w: _median([r.windows[w][0].envoy_cpu for r in results["off"]]) for w in WINDOWS}
    table = Table(
        [
            "variant",
            "window",
            "control plane CPU (ms/s)",
            "Δ vs off",
            "Envoy CPU (ms/s)",
            "Δ vs off",
            "reports / s",
            "bytes per report",
            "KB / s",
        ]
    )
    for variant in VARIANTS:
        for window in WINDOWS:
            picked = [r.windows[window][0] for r in results[variant]]
            control = _median([w.control_cpu for w in picked])
            envoy_cpu = _median([w.envoy_cpu for w in picked])
            table.rows.append(
                [
                    f"**{variant}**" if variant in LRS_VARIANTS else variant,
                    window,
                    f"{control * 1000:.1f}",
                    "" if variant == "off" else f"{(control - off[window]) * 1000:+.1f}",
                    f"{envoy_cpu * 1000:.1f}",
                    "" if variant == "off" else f"{(envoy_cpu - envoy_off[window]) * 1000:+.1f}",
                    f"{_median([w.reports / window_s for w in picked]):.2f}",
                    f"{_median([w.bytes_per_report for w in picked]):,.0f}",
                    f"{_median([w.report_bytes / window_s / 1000 for w in picked]):,.1f}",
                ]
            )
    section.tables.append(table)

    def idle(variant: str) -> tuple[float, float, float]:
        """Control plane and Envoy CPU over off, and bytes per report, idle window, medians."""
        picked = [r.windows["idle"][0] for r in results[variant]]
        return (
            _median([w.control_cpu for w in picked]) - off["idle"],
            _median([w.envoy_cpu for w in picked]) - envoy_off["idle"],
            _median([w.report_bytes / window_s for w in picked]),
        )

    control_all, envoy_all, bytes_all = idle(LRS_ALL)
    section.goals.append(
        Goal(
            f"cost of LRS lag reporting at {models:,} models, every {INTERVAL_S:.0f} s, all clusters (idle)",
            f"control plane {control_all * 1000:+.1f} ms/s, Envoy {envoy_all * 1000:+.1f} ms/s CPU over off, "
            f"{bytes_all / 1000:,.0f} KB/s of reports",
            None,
            "shown (the baseline)",
        )
    )
    for variant in (LRS_SCOPED, LRS_NONE):
        control, envoy_cpu, size = idle(variant)
        section.goals.append(
            Goal(
                f"`{variant}`: cost follows the models that autoscale (idle, vs all clusters)",
                f"control plane {control * 1000:+.1f} ms/s, Envoy {envoy_cpu * 1000:+.1f} ms/s CPU over off, "
                f"{size / 1000:,.1f} KB/s of reports = {size / bytes_all:.3f} x all clusters"
                if bytes_all
                else "no all-clusters baseline",
                None,
                "shown (the issue sets no bound)",
            )
        )
    seen = _median([r.in_flight_seen for r in results[LRS_ALL]])
    seen_scoped = _median([r.in_flight_seen for r in results[LRS_SCOPED]])
    updates = sum(r.updates for v in LRS_VARIANTS for r in results[v])
    section.notes.append(
        f"With all clusters the scheduler's LoadView knew {seen:,.0f} model versions after the traffic "
        f"({touched:,} called); scoped to {SCOPED}, {seen_scoped:,.0f}: only the versions that autoscale "
        f"are tracked. The scope stayed fixed, so no stream sent a second answer ({updates} sent)."
    )
    section.notes.append(
        f"`{LRS_NONE}` is asked every {EMPTY_INTERVAL_S:.0f} s (as the scheduler does with autoscaling "
        f"off), so a {window_s:.0f} s window sees zero or one message: read its KB / s, not its bytes "
        "per report. Every message, even an empty one, carries Envoy's node (about 61 KB)."
    )
    return section


def main() -> None:  # pragma: no cover - manual runs
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshserve-bench-lag-") as work:
        section = asyncio.run(run(Path(work), args.quick))
    print(section.markdown())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
