"""Figure 5 - Envoy memory per model: 10,000 and 30,000 models in a real Envoy, variants side by side.

Lean path (no scheduler, no agents): an in-process :class:`xdsserver.server.XdsServer` over a
:class:`xdsserver.cache.ResourceCache` that this module fills directly with the clusters and scopes
``xdsserver.clusters`` and ``xdsserver.resources`` build for each model (one version, one replica out
of ``REPLICAS``), or a variant of them. For each variant, a fresh Envoy (``--concurrency 1``, the
benchmarks' flags) gets the data-plane listener; then its memory is read (``mem(0)``); then the models
in two steps (to ``SIZES[0]`` then ``SIZES[1]``), each time waiting until Envoy has ACKed every
resource on the delta-xDS stream and ``cluster_manager.active_clusters`` counts them, then reading its
memory again. KB per model = (mem(N) - mem(0)) / N, for tcmalloc's ``allocated`` bytes (admin
``/memory``) and for the process RSS (``VmRSS``). Rounds are interleaved across variants; the table
shows medians.

Variants (``VARIANTS``):
- ``baseline``: clusters of its own per model version (``<model>_<version>_http`` / ``_grpc``, as a
  model that can autoscale or sits on an overcommitting replica gets), one scope per model, and the
  bootstrap without its ``stats_config`` (as before decision 0008);
- ``matcher``: the same resources, ``envoy/bootstrap.yaml`` as committed (its ``stats_matcher``
  inclusion list drops every per-cluster and per-route stat but a few such as ``upstream_rq_active``);
- ``matcher+lazy``: the same + ``deferred_stat_options.enable_deferred_creation_stats`` and
  ``cluster_manager.enable_deferred_cluster_creation`` (stats and worker clusters made on first use);
- ``shared``: what every other model gets (``Split.own_clusters`` false): the clusters of its replica
  set (``REPLICAS`` pairs in all), routes with ``stat_prefix`` per version; no ``stats_config``;
- ``shared+matcher``: shared clusters and the committed bootstrap (the default, decision 0008).

After the last round ``CHECKED`` variants are checked on the full-size Envoy: a REST request
through Envoy by path only (Lua derives ``seldon-model``) reaches the upstream with the versioned
name, and the per-model-version in-flight count is read before, during and after a slow request, and
after a request the client abandons.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf.message import Message

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from bench import envoys
from bench.procs import Process, processes, wait_for
from bench.report import Goal, Section, Table
from stack.config import StackConfig
from stack.envoy_bootstrap import ENVOY_DIR
from stack.ports import free_ports
from xdsserver import resources
from xdsserver.cache import Requirement, ResourceCache
from xdsserver.clusters import split_clusters
from xdsserver.listener import LISTENER_NAME, data_plane_listener
from xdsserver.server import XdsServer
from xdsserver.types import CLUSTER, LISTENER, SCOPED_ROUTE

SIZES = (10_000, 30_000)
QUICK_SIZES = (1_000, 3_000)
ROUNDS = 1  # one round keeps this to ~5 minutes; make it 3 for medians (runs differ by a few %)
QUICK_ROUNDS = 1
REPLICAS = 4
GOAL_KB = 20.0
SETTLE_S = 2.0
DELAY_HEADER = "x-bench-delay"
SLOW_S = 4.0  # the slow request's time at the upstream: admin reads at 30,000 models take a while
CHOSEN = "shared+matcher"  # every model that needs no per-version load signal (decision 0008)
CHECKED = ("matcher", CHOSEN)
Upsert = tuple[str, str, Message]


@dataclass(frozen=True)
class Variant:
    key: str
    shared: bool  # clusters per replica set, as the publisher builds them without own_clusters
    matcher: bool  # envoy/bootstrap.yaml's stats_config (its stats_matcher inclusion list)
    lazy: bool  # deferred stat creation + deferred cluster creation on workers
    what: str


VARIANTS = (
    Variant("baseline", False, False, False, "clusters per version; bootstrap without stats_config (before)"),
    Variant("matcher", False, True, False, "clusters per version (autoscaled or overcommitted); matcher"),
    Variant("matcher+lazy", False, True, True, "clusters per version; matcher + deferred stats/clusters"),
    Variant("shared", True, False, False, "clusters per replica set; no stats_config"),
    Variant("shared+matcher", True, True, False, "clusters per replica set; the committed matcher"),
)


@dataclass
class Point:
    models: int
    allocated: int
    rss: int
    clusters: int
    load_s: float  # resources applied to the cache -> all ACKed by Envoy


@dataclass
class Run:
    variant: str
    points: list[Point] = field(default_factory=list)

    def kb_per_model(self, models: int, metric: str) -> float:
        zero = self.points[0]
        point = next(p for p in self.points if p.models == models)
        delta: int = getattr(point, metric) - getattr(zero, metric)
        return delta / models / 1024


@dataclass
class Check:
    variant: str
    status: int = 0
    model_name: str = ""
    route_header: str = ""
    in_flight: str = ""  # how the per-model-version in-flight count is read
    before: int = -1
    during: int = -1
    after: int = -1
    after_cancel: int = -1  # after a request the client abandoned while in flight
    stats_total: int = 0


# -- resources --------------------------------------------------------------------------------------


def endpoints(upstream_ports: Sequence[int]) -> list[Endpoint]:
    return [Endpoint("127.0.0.1", port, port) for port in upstream_ports]


def model_route(name: str, endpoint: Endpoint, *, own: bool) -> Route:
    return Route(name, (Split(f"{name}_1", WEIGHT_SCALE, (endpoint,), own_clusters=own),))


def model_upserts(names: Sequence[str], replicas: Sequence[Endpoint], *, own: bool) -> list[Upsert]:
    """Each model's scope and the clusters its split names, as the route publisher builds them
    (clusters shared by a replica set appear once)."""
    clusters: dict[str, Message] = {}
    scopes: list[Upsert] = []
    for i, name in enumerate(names):
        route = model_route(name, replicas[i % len(replicas)], own=own)
        for split in route.splits:
            clusters.update(split_clusters(split))
        scopes.append((SCOPED_ROUTE, route.name, resources.scope_for(route)))
    return [*((CLUSTER, n, c) for n, c in clusters.items()), *scopes]


def expected_clusters(models: int, replicas: int, *, own: bool) -> int:
    return 2 * models if own else 2 * min(models, replicas)


# -- bootstrap --------------------------------------------------------------------------------------


def bootstrap(variant: Variant, *, admin_port: int, xds_port: int) -> dict[str, Any]:
    """``envoy/bootstrap.yaml`` rendered as the stack renders it, with the variant's stats settings.

    The stats matcher is the committed file's own ``stats_config``; the lazy options are added here.
    """
    text = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text()).substitute(
        node_id=f"bench-memory-{admin_port}",
        admin_address="127.0.0.1",
        admin_port=admin_port,
        xds_host="127.0.0.1",
        xds_port=xds_port,
    )
    config: dict[str, Any] = yaml.safe_load(text)
    stats_config = config.pop("stats_config", None)
    config.pop("deferred_stat_options", None)
    config.get("cluster_manager", {}).pop("enable_deferred_cluster_creation", None)
    if variant.matcher:
        if stats_config is None:
            raise RuntimeError("envoy/bootstrap.yaml has no stats_config to measure")
        config["stats_config"] = stats_config
    if variant.lazy:
        config["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
        config.setdefault("cluster_manager", {})["enable_deferred_cluster_creation"] = True
    return config


def _write_bootstrap(work: Path, variant: Variant, *, admin_port: int, xds_port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{variant.key.replace('+', '-')}.json"
    path.write_text(json.dumps(bootstrap(variant, admin_port=admin_port, xds_port=xds_port)))
    return path


# -- the measurement --------------------------------------------------------------------------------


async def _memory(session: aiohttp.ClientSession, admin: str, envoy: Process) -> tuple[int, int]:
    async with session.get(f"{admin}/memory") as response:
        allocated = int((await response.json(content_type=None))["allocated"])
    return allocated, _rss(envoy.pid)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def _stats(session: aiohttp.ClientSession, admin: str, *names: str) -> dict[str, int]:
    """Current values of these counters/gauges, from one admin read (-1: not there)."""
    pattern = "^(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
    async with session.get(f"{admin}/stats", params={"filter": pattern, "format": "json"}) as response:
        data = await response.json(content_type=None)
    found = {s["name"]: int(s["value"]) for s in data.get("stats", []) if "value" in s}
    return {name: found.get(name, -1) for name in names}


async def _stat(session: aiohttp.ClientSession, admin: str, name: str) -> int:
    return (await _stats(session, admin, name))[name]


async def _settled(session: aiohttp.ClientSession, admin: str, envoy: Process) -> tuple[int, int]:
    """Memory once two reads 1 s apart agree within 1 % (thread-local updates and frees done)."""
    await asyncio.sleep(SETTLE_S)
    last = await _memory(session, admin, envoy)
    for _ in range(10):
        await asyncio.sleep(1.0)
        now = await _memory(session, admin, envoy)
        if abs(now[0] - last[0]) <= 0.01 * max(last[0], 1):
            return now
        last = now
    return last


async def _acked(xds: XdsServer, wanted: list[Requirement], within: float, what: str, envoy: Process) -> None:
    async def check() -> bool:
        return xds.acked(wanted)

    await wait_for(check, within=within, what=what, interval=0.2, alive=[envoy])


async def _one_run(
    work: Path,
    variant: Variant,
    steps: list[tuple[int, list[Upsert]]],
    listener: Message,
    replicas: int,
    check_name: str | None,
) -> tuple[Run, Check | None]:
    run = Run(variant.key)
    cache = ResourceCache()
    xds = XdsServer(cache)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(xds, server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    wanted = cache.apply(upserts=[(LISTENER, LISTENER_NAME, listener)])
    admin_port = free_ports(1)[0]
    admin = f"http://127.0.0.1:{admin_port}"
    config_path = _write_bootstrap(work, variant, admin_port=admin_port, xds_port=xds_port)
    check: Check | None = None
    try:
        with processes(work / "logs") as group:
            binary = StackConfig().binary("envoy")
            envoy = group.start(variant.key, envoys.envoy_argv(binary, config_path, admin_port))
            async with aiohttp.ClientSession() as session:
                await _acked(xds, wanted, 60, "Envoy holds the listener", envoy)
                allocated, rss = await _settled(session, admin, envoy)
                run.points.append(Point(0, allocated, rss, 0, 0.0))
                # The bootstrap's own clusters (xDS, load reports) are not the models'.
                static = await _stat(session, admin, "cluster_manager.active_clusters")
                for models, upserts in steps:
                    t0 = time.monotonic()
                    wanted = cache.apply(upserts=upserts)
                    await _acked(xds, wanted, 900, f"{variant.key}: {models} models ACKed", envoy)
                    load_s = time.monotonic() - t0
                    clusters = await _stat(session, admin, "cluster_manager.active_clusters") - static
                    expected = expected_clusters(models, replicas, own=not variant.shared)
                    if clusters != expected:
                        raise RuntimeError(
                            f"{variant.key}: {clusters} clusters in Envoy, expected {expected}"
                        )
                    allocated, rss = await _settled(session, admin, envoy)
                    run.points.append(Point(models, allocated, rss, clusters, load_s))
                    print(
                        f"   {variant.key}: {models} models, {allocated / 2**20:.0f} MiB allocated, "
                        f"RSS {rss / 2**20:.0f} MiB (ACKed in {load_s:.1f} s)",
                        flush=True,
                    )
                if check_name is not None:
                    check = await _check(session, admin, listener_url(listener), check_name, variant)
    finally:
        await server.stop(0)
    return run, check


def listener_url(listener: Message) -> str:
    address = listener.address.socket_address  # type: ignore[attr-defined]
    return f"http://{address.address}:{address.port_value}"


async def _check(session: aiohttp.ClientSession, admin: str, url: str, name: str, variant: Variant) -> Check:
    """A REST request by path only; then the in-flight count before, during and after a slow one,
    and after a slow one the client abandons (Envoy resets it upstream)."""
    target = f"{name}_1"
    check = Check(variant.key)
    infer = f"{url}/v2/models/{name}/infer"
    json_type = {"content-type": "application/json"}
    async with session.post(infer, data=b"{}", headers=json_type) as response:
        check.status = response.status
        check.route_header = response.headers.get("x-seldon-route", "")
        body = await response.json(content_type=None)
        check.model_name = str(body.get("model_name", ""))
    if variant.shared:
        prefix = f"vhost.seldon_service.route.{target}_http."
        check.in_flight = f"`{prefix}upstream_rq_total` - `upstream_rq_completed`"

        async def in_flight() -> int:
            total, done = prefix + "upstream_rq_total", prefix + "upstream_rq_completed"
            values = await _stats(session, admin, total, done)  # one read: both at the same instant
            return values[total] - max(0, values[done])
    else:
        gauge = f"cluster.{target}_http.upstream_rq_active"
        check.in_flight = f"`{gauge}`"

        async def in_flight() -> int:
            return await _stat(session, admin, gauge)

    check.before = await in_flight()
    slow_headers = {**json_type, DELAY_HEADER: str(SLOW_S)}
    slow = asyncio.ensure_future(_post(session, infer, slow_headers))
    await asyncio.sleep(1.0)
    check.during = await in_flight()
    await slow
    check.after = await in_flight()
    abandoned = asyncio.ensure_future(_post(session, infer, slow_headers))
    await asyncio.sleep(0.5)
    abandoned.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    await asyncio.sleep(SLOW_S)  # past the upstream's delay: had the request gone on, it would be done
    check.after_cancel = await in_flight()
    async with session.get(f"{admin}/stats", params={"format": "json"}) as response:
        check.stats_total = len((await response.json(content_type=None)).get("stats", []))
    return check


async def _post(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    async with session.post(url, data=b"{}", headers=headers) as response:
        await response.read()
        return response.status


# -- upstream ---------------------------------------------------------------------------------------


async def _upstream(ports: Sequence[int]) -> web.AppRunner:
    """Answers OIP REST infer with the model name it was asked for, after ``x-bench-delay`` seconds."""

    async def infer(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.headers.get(DELAY_HEADER, "0")))
        return web.json_response({"model_name": request.match_info["name"], "outputs": []})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


# -- the figure -------------------------------------------------------------------------------------


async def run(work: Path, quick: bool = False, only: Sequence[str] = ()) -> Section:
    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    variants = [v for v in VARIANTS if not only or v.key in only]
    started = time.monotonic()
    ports = free_ports(REPLICAS + 1)
    replicas = endpoints(ports[:REPLICAS])
    envoy_port = ports[REPLICAS]
    lua = (ENVOY_DIR / "seldon.lua").read_text()
    listener = data_plane_listener(address="127.0.0.1", port=envoy_port, lua_code=lua)
    names = [f"m{i:05d}" for i in range(sizes[-1])]
    steps_of: dict[bool, list[tuple[int, list[Upsert]]]] = {}
    for shared in sorted({v.shared for v in variants}):
        steps_of[shared] = [
            (sizes[0], model_upserts(names[: sizes[0]], replicas, own=not shared)),
            (sizes[1], model_upserts(names[sizes[0] :], replicas, own=not shared)),
        ]
    runs: dict[str, list[Run]] = {v.key: [] for v in variants}
    checks: list[Check] = []
    upstream = await _upstream(ports[:REPLICAS])
    try:
        for round_ in range(rounds):
            for variant in variants:
                last = round_ == rounds - 1 and variant.key in CHECKED
                result, found = await _one_run(
                    work / f"r{round_}",
                    variant,
                    steps_of[variant.shared],
                    listener,
                    REPLICAS,
                    names[-1] if last else None,
                )
                runs[variant.key].append(result)
                checks += [found] if found is not None else []
    finally:
        await upstream.cleanup()
    section = _section(sizes, rounds, variants, runs, checks)
    section.seconds = time.monotonic() - started
    return section


def _section(
    sizes: Sequence[int],
    rounds: int,
    variants: Sequence[Variant],
    runs: dict[str, list[Run]],
    checks: Sequence[Check],
) -> Section:
    section = Section(
        key="envoy-memory",
        title="5. Envoy memory per model",
        intro=(
            f"A real Envoy (`--concurrency {envoys.ENVOY_CONCURRENCY}`) fed over delta xDS by an "
            "in-process `XdsServer` + `ResourceCache` filled directly with `xdsserver.resources` "
            f"output (no scheduler: `bench/envoy_memory.py`). Each model: one version on one of "
            f"{REPLICAS} replicas. Per variant, a fresh Envoy: listener only, then "
            f"{sizes[0]:,} models, then {sizes[1]:,}, each step waited for until Envoy ACKed every "
            "resource and `cluster_manager.active_clusters` counts them, memory read after it settles. "
            "KB per model = (mem(N) - mem(0)) / N, for tcmalloc `allocated` (admin `/memory`) and "
            f"process RSS. {rounds} interleaved rounds, medians."
        ),
        command="python -m bench --only envoy-memory",
    )
    mib = 2**20
    table = Table(
        [
            "variant",
            "what",
            "clusters at " + f"{sizes[1]:,}",
            f"KB/model @ {sizes[0]:,} (allocated / RSS)",
            f"KB/model @ {sizes[1]:,} (allocated / RSS)",
            f"Envoy @ {sizes[1]:,}: allocated / RSS",
            "idle Envoy (0 models): allocated / RSS",
            f"ACK time for +{sizes[1] - sizes[0]:,}",
        ]
    )
    for variant in variants:
        done = runs[variant.key]

        def med(values: list[float]) -> float:
            return statistics.median(values)

        def kb(models: int, metric: str, runs_: list[Run] = done) -> float:
            return med([r.kb_per_model(models, metric) for r in runs_])

        top = [r.points[-1] for r in done]
        zero = [r.points[0] for r in done]
        table.rows.append(
            [
                f"**{variant.key}**" if variant.key == CHOSEN else variant.key,
                variant.what,
                f"{top[0].clusters:,}",
                f"{kb(sizes[0], 'allocated'):.1f} / {kb(sizes[0], 'rss'):.1f}",
                f"{kb(sizes[1], 'allocated'):.1f} / {kb(sizes[1], 'rss'):.1f}",
                f"{med([p.allocated / mib for p in top]):.0f} / {med([p.rss / mib for p in top]):.0f} MiB",
                f"{med([p.allocated / mib for p in zero]):.0f} / {med([p.rss / mib for p in zero]):.0f} MiB",
                f"{med([p.load_s for p in top]):.1f} s",
            ]
        )
    section.tables.append(table)
    if runs.get(CHOSEN):
        chosen = runs[CHOSEN]
        rss = statistics.median([r.kb_per_model(sizes[1], "rss") for r in chosen])
        allocated = statistics.median([r.kb_per_model(sizes[1], "allocated") for r in chosen])
        section.goals.append(
            Goal(
                f"Envoy memory per model at {sizes[1]:,} ≤ {GOAL_KB:.0f} KB (process RSS)",
                f"{rss:.1f} KB RSS ({allocated:.1f} KB allocated) with clusters per replica set; "
                "a model that can autoscale or sits on an overcommitting replica keeps clusters of "
                "its own (`matcher` row)",
                rss <= GOAL_KB,
            )
        )
    for check in checks:
        section.notes.append(
            f"Check on `{check.variant}` at {sizes[1]:,} models: a REST request by path only answered "
            f"{check.status}, served upstream as `{check.model_name}` (`x-seldon-route: "
            f"{check.route_header}`). In flight for that model version, read as {check.in_flight}: "
            f"{check.before} before, {check.during} while a {SLOW_S:.0f} s request ran, "
            f"{check.after} after it, {check.after_cancel} after a request the client abandoned "
            f"mid-way. Envoy held {check.stats_total:,} stats in all."
        )
    return section


def main() -> None:  # pragma: no cover - manual runs
    import argparse
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshserve-bench-memory-") as work:
        section = asyncio.run(run(Path(work), args.quick, args.only))
    print(section.markdown())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
