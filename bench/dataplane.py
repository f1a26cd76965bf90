"""Figure 1 - data-plane overhead: MLServer direct vs static Envoy vs the full meshserve stack.

REST and gRPC inference on the iris model, three targets measured in one run, interleaved
(the start target rotates each round), closed-loop max throughput (wrk / h2load) and open-loop
fixed-rate latency (h2load --rps, p50/p99 from its per-request log). Both Envoys run the same
binary with the same flags (``bench.envoys.ENVOY_CONCURRENCY`` workers).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from bench import envoys, loadgen, payloads
from bench.envoy_times import OwnTimes
from bench.loadgen import Result, median, median_interval, paired_difference, paired_ratio
from bench.mesh import Mesh, bench_config, start_mesh
from bench.procs import Process, Processes, processes, wait_for
from bench.report import Goal, Section, Table, interval_goal
from samples import train
from stack.ports import free_ports
from stack.probes import port_open


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    http_port: int
    grpc_port: int
    model: str  # the name in the path / gRPC body
    headers: dict[str, str] = field(default_factory=dict)
    proxy: Process | None = None  # whose CPU is recorded during closed-loop runs
    access_log: Path | None = None  # where the proxy logs each request (bench/envoy_times.py)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/infer"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}{payloads.GRPC_PATH}"


@dataclass
class Settings:
    rounds: int = 8
    seconds: float = 3.0
    connections: int = 4
    open_clients: int = 4
    open_load_fraction: float = 0.25
    """Open-loop rate as a fraction of the static Envoy's closed-loop throughput."""
    open_rounds: int = 24
    """More rounds than the closed loop's: a p50 bound of 0.2 ms needs many pairs (``p50_goal``)."""


Measure = Callable[[Target], Awaitable[Result]]


async def run(work: Path, quick: bool = False) -> Section:
    settings = Settings(rounds=2, seconds=2.0, open_rounds=2) if quick else Settings()
    started = time.monotonic()
    train.ensure_artifacts()
    section = Section(
        key="dataplane",
        title="1. Data-plane overhead",
        intro=(
            "Inference on the iris model (sklearn, MLServer, `MLSERVER_PARALLEL_WORKERS=0`) through "
            "three targets: **MLServer direct** (the floor), **static Envoy** (one listener, one route, "
            "one cluster to MLServer: the proxy floor) and **meshserve** (the scheduler's xDS "
            "configuration: scoped routes on `seldon-model`, Lua filter, path rewrite to `iris_1`). "
            f"Both Envoys: same binary, `--concurrency {envoys.ENVOY_CONCURRENCY}`, the same access log "
            "(a JSON line per request, for Envoy's own time). Closed loop: "
            f"{settings.connections} connections (wrk for REST, h2load for gRPC, one stream in flight "
            f"per connection), {settings.seconds:g} s per run. Open loop: h2load at a fixed rate "
            f"({settings.open_clients} clients x `--rps`, total = {settings.open_load_fraction:.0%} of the "
            "static Envoy's closed-loop throughput), p50/p99 over every request of the run. "
            f"{settings.rounds} interleaved rounds of closed loop, then {settings.open_rounds} of open loop; "
            "medians shown. Ratios and differences against the static Envoy are paired: each round's own "
            "(its runs are adjacent in time), then the median over rounds; a p50 bound is judged on the "
            "90 % interval of that median."
        ),
        command="python -m bench --only dataplane",
    )
    with processes(work / "logs") as group:
        targets, ceiling = await _start(group, work)
        bodies = _bodies(work)
        await _check(targets)
        await _warm_up(targets, bodies)
        closed: dict[tuple[str, str], list[Result]] = {}
        proxy_cpu: dict[tuple[str, str], list[float]] = {}
        for round_no in range(settings.rounds):
            order = targets[round_no % 3 :] + targets[: round_no % 3]
            for proto in ("REST", "gRPC"):
                for target in order:
                    cpu_before = target.proxy.cpu_seconds() if target.proxy else 0.0
                    result = await _closed(proto, target, bodies, settings)
                    closed.setdefault((proto, target.key), []).append(result)
                    if target.proxy is not None:
                        used = target.proxy.cpu_seconds() - cpu_before
                        proxy_cpu.setdefault((proto, target.key), []).append(
                            used / max(result.requests, 1) * 1e6
                        )
        rates = {
            proto: settings.open_load_fraction * median([r.rps for r in closed[(proto, "static")]])
            for proto in ("REST", "gRPC")
        }
        opened: dict[tuple[str, str], list[Result]] = {}
        own = OwnTimes()
        for round_no in range(settings.open_rounds):
            order = targets[round_no % 3 :] + targets[: round_no % 3]
            for proto in ("REST", "gRPC"):
                for target in order:
                    with own.run((proto, target.key), loadgen.WARM_UP_S):
                        result = await _open(proto, target, bodies, settings, rates[proto])
                    opened.setdefault((proto, target.key), []).append(result)
        generator = await _generator_ceiling(ceiling, bodies, settings)
    own_ms = own.medians_ms(access_logs(targets))  # the Envoys have stopped: their logs are flushed
    _tabulate(section, targets, closed, opened, own_ms, proxy_cpu, rates, generator, settings)
    section.seconds = time.monotonic() - started
    return section


async def _start(group: Processes, work: Path) -> tuple[list[Target], Target]:
    config = bench_config(work / "mesh", envoy_access_log=True)
    mesh = await start_mesh(group, config, ("scheduler", "envoy", "mlserver", "agent"))
    async with grpc.aio.insecure_channel(mesh.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=payloads.model("iris")), timeout=10)
    return await start_static(group, work, mesh)


async def start_static(group: Processes, work: Path, mesh: Mesh) -> tuple[list[Target], Target]:
    """Once iris (loaded already) routes through ``mesh``: the static and direct_response Envoys, and
    the targets (MLServer direct, static Envoy, meshserve) plus the generator-ceiling one."""
    config = mesh.config
    async with aiohttp.ClientSession() as session:

        async def routed() -> bool:
            try:
                async with session.post(
                    f"{mesh.url}/v2/models/iris/infer",
                    data=payloads.IRIS_REST,
                    headers={"seldon-model": "iris", "content-type": "application/json"},
                ) as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(routed, within=60, what="iris routable through meshserve", interval=0.1)
    envoy = config.binary("envoy")
    port, admin, up_port, up_admin = free_ports(4)
    static_log = work / "static-envoy-access.log"
    static_cfg = envoys.write_static_proxy(
        work / "static-envoy.json",
        admin_port=admin,
        port=port,
        http_upstream=config.mlserver_http_port,
        grpc_upstream=config.mlserver_grpc_port,
        access_log=static_log,
    )
    static = group.start("static-envoy", envoys.envoy_argv(envoy, static_cfg, admin))
    upstream_cfg = envoys.write_direct_response(
        work / "upstream-envoy.json", admin_port=up_admin, port=up_port
    )
    upstream = group.start("upstream-envoy", envoys.envoy_argv(envoy, upstream_cfg, up_admin))
    for p, proc in ((port, static), (up_port, upstream)):
        await wait_for(functools.partial(port_open, "127.0.0.1", p), within=30, what="envoy", alive=[proc])
    targets = [
        Target("direct", "MLServer direct", config.mlserver_http_port, config.mlserver_grpc_port, "iris_1"),
        Target("static", "static Envoy", port, port, "iris_1", proxy=static, access_log=static_log),
        Target(
            "meshserve",
            "meshserve",
            config.http_port,
            config.http_port,
            "iris",
            {"seldon-model": "iris"},
            proxy=mesh.procs["envoy"],
            access_log=config.logs / "envoy-access.log" if config.envoy_access_log else None,
        ),
    ]
    ceiling = Target("ceiling", "Envoy direct_response", up_port, up_port, "iris_1", proxy=upstream)
    return targets, ceiling


def access_logs(targets: Sequence[Target]) -> dict[str, Path]:
    return {t.key: t.access_log for t in targets if t.access_log is not None}


def _bodies(work: Path) -> dict[str, Path]:
    return {
        "rest": payloads.write(work / "iris.json", payloads.IRIS_REST),
        "grpc-iris": payloads.write(work / "iris.grpc", payloads.grpc_frame("iris")),
        "grpc-iris_1": payloads.write(work / "iris_1.grpc", payloads.grpc_frame("iris_1")),
    }


async def _check(targets: list[Target]) -> None:
    """Each target answers a real prediction over REST and gRPC (h2load cannot see grpc-status)."""
    async with aiohttp.ClientSession() as session:
        for target in targets:
            async with session.post(
                target.rest_url,
                data=payloads.IRIS_REST,
                headers={"content-type": "application/json", **target.headers},
            ) as response:
                body = await response.json()
                if response.status != 200 or body.get("model_name") != "iris_1":
                    raise RuntimeError(f"{target.label} REST check failed: {response.status} {body}")
    for target in targets:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.grpc_port}") as channel:
            stub = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(
                payloads.infer_request(target.model), metadata=tuple(target.headers.items()), timeout=10
            )
            if reply.model_name != "iris_1" or not reply.outputs:
                raise RuntimeError(f"{target.label} gRPC check failed: {reply}")


def _grpc_headers(target: Target) -> dict[str, str]:
    return {"content-type": "application/grpc", "te": "trailers", **target.headers}


def _grpc_body(target: Target, bodies: dict[str, Path]) -> Path:
    return bodies["grpc-iris"] if target.model == "iris" else bodies["grpc-iris_1"]


def _rest_headers(target: Target) -> dict[str, str]:
    return {"content-type": "application/json", **target.headers}


async def _warm_up(targets: list[Target], bodies: dict[str, Path]) -> None:
    for target in targets:
        await loadgen.wrk(
            target.rest_url, payloads.IRIS_REST, _rest_headers(target), connections=2, seconds=1
        )
        await loadgen.h2load(
            target.grpc_url,
            _grpc_body(target, bodies),
            _grpc_headers(target),
            clients=2,
            seconds=1,
            warm_up=0.1,
        )


async def _closed(proto: str, target: Target, bodies: dict[str, Path], settings: Settings) -> Result:
    if proto == "REST":
        return await loadgen.wrk(
            target.rest_url,
            payloads.IRIS_REST,
            _rest_headers(target),
            connections=settings.connections,
            seconds=settings.seconds,
        )
    return await loadgen.h2load(
        target.grpc_url,
        _grpc_body(target, bodies),
        _grpc_headers(target),
        clients=settings.connections,
        seconds=settings.seconds,
    )


async def _open(
    proto: str, target: Target, bodies: dict[str, Path], settings: Settings, rate: float
) -> Result:
    per_client = max(1.0, rate / settings.open_clients)
    if proto == "REST":
        return await loadgen.h2load(
            target.rest_url,
            bodies["rest"],
            _rest_headers(target),
            clients=settings.open_clients,
            seconds=settings.seconds,
            h1=True,
            rps_per_client=per_client,
        )
    return await loadgen.h2load(
        target.grpc_url,
        _grpc_body(target, bodies),
        _grpc_headers(target),
        clients=settings.open_clients,
        seconds=settings.seconds,
        rps_per_client=per_client,
    )


async def _generator_ceiling(
    ceiling: Target, bodies: dict[str, Path], settings: Settings
) -> dict[str, Result]:
    return await loadgen.generator_ceiling(
        rest_url=ceiling.rest_url,
        rest_headers=_rest_headers(ceiling),
        grpc_url=ceiling.grpc_url,
        grpc_body=bodies["grpc-iris_1"],
        grpc_headers=_grpc_headers(ceiling),
        connections=settings.connections,
        seconds=min(settings.seconds, 3.0),
    )


def paired_goals(
    proto: str,
    rps: list[float],
    static_rps: list[float],
    p50: list[float],
    static_p50: list[float],
    *,
    suffix: str = "",
) -> list[Goal]:
    """Figure 1's two goals for ``proto``, judged on paired per-round figures (each round's listed)."""
    ratio, ratios = paired_ratio(rps, static_rps)
    delta, deltas = paired_difference(p50, static_p50)
    return [
        Goal(
            f"{proto} throughput ≥ 0.97 x static Envoy{suffix}",
            f"{ratio:.3f}, median of each round's ratio ({', '.join(f'{r:.2f}' for r in ratios)})",
            ratio >= 0.97,
        ),
        p50_goal(f"{proto} p50 ≤ static Envoy + 0.2 ms{suffix}", delta, deltas, bound=0.2),
    ]


def own_time_difference(ours: list[float], static: list[float]) -> str:
    """meshserve's Envoy's own time per request (bench/envoy_times.py) less the static Envoy's: the
    paired median and its 90 % interval, in µs."""
    delta, deltas = paired_difference(ours, static)
    low, high = median_interval(deltas)
    return (
        f"{delta * 1000:+.0f} µs (90 % interval [{low * 1000:+.0f}, {high * 1000:+.0f}], {len(deltas)} pairs)"
    )


def p50_goal(text: str, delta: float, deltas: list[float], *, bound: float) -> Goal:
    """A latency bound judged on the interval of the paired differences' median, not on the median
    alone: per pair the open-loop p50 difference spreads by about ±0.5 ms on this machine, more
    than the bound, so a median of a few pairs lands either side of it by chance."""
    low, high = median_interval(deltas)
    measured = (
        f"{delta:+.3f} ms, 90 % interval [{low:+.3f}, {high:+.3f}], median of {len(deltas)} paired "
        f"differences ({', '.join(f'{d:+.2f}' for d in deltas)})"
    )
    return interval_goal(text, measured, deltas, bound=bound)


def _tabulate(
    section: Section,
    targets: list[Target],
    closed: dict[tuple[str, str], list[Result]],
    opened: dict[tuple[str, str], list[Result]],
    own_ms: dict[tuple[str, ...], list[float]],
    proxy_cpu: dict[tuple[str, str], list[float]],
    rates: dict[str, float],
    generator: dict[str, Result],
    settings: Settings,
) -> None:
    for proto in ("REST", "gRPC"):
        static_rps = [r.rps for r in closed[(proto, "static")]]
        static_p50 = [r.p50_ms for r in opened[(proto, "static")]]
        table = Table(
            [
                "target",
                "closed-loop req/s (runs)",
                "vs static Envoy",
                "proxy CPU / req",
                f"open loop @ {rates[proto]:.0f} req/s: p50",
                "p99",
                "p50 - static",
                "Envoy's own time (median)",
                "errors",
            ],
            caption=f"**{proto}**",
        )
        for target in targets:
            runs = closed[(proto, target.key)]
            opens = opened[(proto, target.key)]
            cpu = proxy_cpu.get((proto, target.key))
            own_runs = own_ms.get((proto, target.key))
            table.rows.append(
                [
                    target.label,
                    f"{median([r.rps for r in runs]):,.0f} ({', '.join(f'{r.rps:,.0f}' for r in runs)})",
                    f"{paired_ratio([r.rps for r in runs], static_rps)[0]:.3f}",
                    f"{median(cpu):.0f} µs" if cpu else "-",
                    f"{median([r.p50_ms for r in opens]):.3f} ms",
                    f"{median([r.p99_ms for r in opens]):.3f} ms",
                    f"{paired_difference([r.p50_ms for r in opens], static_p50)[0]:+.3f} ms",
                    f"{median(own_runs) * 1000:.0f} µs" if own_runs else "-",
                    str(sum(r.errors for r in runs + opens)),
                ]
            )
        section.tables.append(table)
        section.goals += paired_goals(
            proto,
            [r.rps for r in closed[(proto, "meshserve")]],
            static_rps,
            [r.p50_ms for r in opened[(proto, "meshserve")]],
            static_p50,
        )
    deltas = {
        proto: paired_difference(
            [r.p50_ms for r in opened[(proto, "meshserve")]], [r.p50_ms for r in opened[(proto, "static")]]
        )[0]
        for proto in ("REST", "gRPC")
    }
    for proto in ("REST", "gRPC"):
        static_cpu = median(proxy_cpu.get((proto, "static"), []))
        mesh_cpu = median(proxy_cpu.get((proto, "meshserve"), []))
        if all(g.met for g in section.goals if g.text.startswith(proto)):
            continue
        section.notes.append(
            f"**Why {proto} misses:** meshserve's Envoy used {mesh_cpu:.0f} µs of CPU per request against "
            f"{static_cpu:.0f} µs for the static Envoy ({mesh_cpu - static_cpu:+.0f} µs), and its p50 was "
            f"{deltas[proto]:+.3f} ms above the static Envoy's (REST {deltas['REST']:+.3f} ms, gRPC "
            f"{deltas['gRPC']:+.3f} ms). What meshserve's listener does and the static one does not: "
            "the scoped-route lookup on `seldon-model`; for REST a regex path rewrite (the Lua filter is "
            "switched off on REST routes and runs only for path-only requests); for gRPC the Lua filter "
            "(envoy/seldon.lua) buffering the whole request body and rewriting `model_name` in the "
            "protobuf frame to the versioned name before anything is sent upstream. The proxy-CPU column "
            "is the measured cost of that work, and throughput follows it because the proxy shares the "
            "cores with MLServer. Bisected for gRPC (2026-12-02, ad hoc: static copies of meshserve's "
            "listener with one feature removed at a time, 35 paired open-loop rounds each) without a "
            "single cause: with the Lua filter removed, or with everything but the scoped routes "
            "removed, the p50 stayed 0.1-0.3 ms above the static Envoy's, while an identical copy of the "
            "static Envoy measured +0.01 ms (40 rounds: the pairing itself is unbiased)."
        )
    section.notes.append(
        "**Envoy's own time** (both Envoys write the same access log, `meshserve up "
        "--envoy-access-log`; bench/envoy_times.py): per request, its whole time in Envoy (first byte "
        "in to last byte out) minus the model server's part (first byte sent upstream to last byte "
        "back), the median over each open-loop run. meshserve's less the static Envoy's, paired by "
        "round: REST "
        + own_time_difference(own_ms[("REST", "meshserve")], own_ms[("REST", "static")])
        + ", gRPC "
        + own_time_difference(own_ms[("gRPC", "meshserve")], own_ms[("gRPC", "static")])
        + ". It leaves out the model server's spread, so it is precise, but it is not all a proxy "
        "adds: the kernel's loopback hops and the wait for Envoy's and MLServer's threads to be "
        "scheduled fall outside it (a static Envoy's own time is about 30 µs, while its p50 is over "
        "1 ms above MLServer direct). Those grow with the CPU each request costs on this 2-core "
        "machine (the proxy-CPU column), which is how a few tens of µs of Envoy's own time can show "
        "as more in a client's p50."
    )
    section.notes.append(
        "Run-to-run spread is large on this 2-core machine (see the individual runs): the generator, "
        "both Envoys, MLServer, scheduler and agent share two cores, and other work on the machine "
        "(load average in the machine table) adds noise; compare ratios within one run only."
    )
    gen = Table(
        ["generator", "req/s against Envoy direct_response", "generator CPU / s of run", "p50"],
        caption="**Generator ceiling**: the same generator and connection count against an Envoy that "
        "answers every request itself; far above every figure above, so the generators were not the limit.",
    )
    for name, result in generator.items():
        gen.rows.append(
            [
                name,
                f"{result.rps:,.0f}",
                f"{result.generator_cpu_s / max(result.seconds, 1e-9):.2f}",
                f"{result.p50_ms:.3f} ms",
            ]
        )
    section.tables.append(gen)
    mesh_gen_cpu = [
        r.generator_cpu_s / max(r.seconds, 1e-9)
        for (p, k), rs in closed.items()
        if k == "meshserve"
        for r in rs
    ]
    section.notes += [
        "`proxy CPU / req`: CPU time of the Envoy process (from `/proc/<pid>/stat`) during the "
        "closed-loop run divided by the requests served: what the proxy costs per request.",
        f"Generator CPU during the meshserve closed-loop runs: median {median(mesh_gen_cpu):.2f} cores "
        "(of the machine's total).",
        "All processes (generator, Envoy, MLServer, scheduler, agent) share this machine's cores, so "
        "CPU spent by a proxy is CPU not available to MLServer: the throughput gap measures that too.",
        f"{settings.rounds} closed-loop and {settings.open_rounds} open-loop rounds x {settings.seconds:g} s "
        "per run; open loop: h2load `--rps` per "
        f"client with {settings.open_clients} clients, one request in flight each.",
    ]
