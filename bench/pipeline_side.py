"""Figures 10 and 11 - what the pipeline components cost everything else (issue 11, "Must show").

**Idle CPU** (``pipeline-idle``): one stack with Kafka (scheduler, Envoy, MLServer, agent, Tansu,
model gateway, dataflow engine), the two add/sub models and the pipelines ``p1`` and ``p2`` of
``bench.pipelines`` loaded and ready, then no traffic: each process's CPU time (schedstat, ns
resolution) over windows of a few seconds, as ms of CPU per second of wall time, pipeline components
side by side with the core ones.

**Data plane with pipelines** (``dataplane-pipelines``): figure 1's measurements (iris through the
meshserve Envoy and through a static Envoy, REST and gRPC, closed-loop throughput and open-loop
p50) in one run, in interleaved rounds, without the pipeline components and with them running and
the pipelines loaded (Tansu, model gateway and dataflow engine are started for each "with" round
and stopped after it, so both states share the same scheduler, Envoy and MLServer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from bench import dataplane, loadgen, payloads, pipelines
from bench.envoy_times import OwnTimes
from bench.loadgen import Result, median, paired_difference, paired_ratio
from bench.mesh import Mesh, bench_config, start_components, start_mesh
from bench.procs import Process, Processes, processes
from bench.report import Goal, Section, Table
from samples import train
from stack.components import components
from stack.config import StackConfig

CORE = ("scheduler", "envoy", "mlserver", "agent")
PIPELINE = ("kafka", "modelgateway", "engine")
SETTLE_SECONDS = 12.0
PAIRS_PER_STATE = 2  # paired rounds each time a state is set up (starting the components takes ~15 s)
OPEN_PAIRS_PER_STATE = 6  # of which open loop only after the first two: p50 needs many (dataplane.p50_goal)
LABELS = {
    "scheduler": "scheduler",
    "envoy": "Envoy",
    "mlserver": "MLServer",
    "agent": "agent",
    "kafka": "Tansu broker",
    "modelgateway": "model gateway",
    "engine": "dataflow engine (+ pipeline gateway)",
}


def _config(work: Path) -> StackConfig:
    config = bench_config(
        work / "mesh", kafka=True, artifact_roots=str(pipelines.MODELS), envoy_access_log=True
    )
    config.home.mkdir(parents=True, exist_ok=True)
    return config


async def _load_pipelines(config: StackConfig, mesh_url: str, *, setup: bool = True) -> None:
    """Load the models and pipelines (``setup``), then wait until every one of them answers."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{config.scheduler_port}") as channel,
        aiohttp.ClientSession() as http,
    ):
        if setup:
            await pipelines._setup(scheduler_pb2_grpc.SchedulerStub(channel))
        await pipelines._wait_ready(http, mesh_url)


# -- idle CPU ----------------------------------------------------------------------------------------


async def run_idle(work: Path, quick: bool = False) -> Section:
    windows, seconds, settle = (2, 3.0, 3.0) if quick else (5, 10.0, 10.0)
    started = time.monotonic()
    config = _config(work)
    rates: dict[str, list[float]] = {name: [] for name in (*CORE, *PIPELINE)}
    with processes(work / "logs") as group:
        mesh = await start_mesh(group, config, [c.name for c in components(config)])
        await _load_pipelines(config, mesh.url)
        await asyncio.sleep(settle)  # past the readiness traffic: audit bursts, commits, rebalances
        for _ in range(windows):
            before = {name: mesh.procs[name].cpu_seconds_precise() for name in rates}
            began = time.monotonic()
            await asyncio.sleep(seconds)
            elapsed = time.monotonic() - began
            for name in rates:
                used = mesh.procs[name].cpu_seconds_precise() - before[name]
                rates[name].append(used / elapsed * 1000)
    table = Table(
        ["process", "part", "idle CPU, ms/s (median)", "windows"],
        caption=f"{windows} windows of {seconds:g} s, no traffic, 2 models and 2 pipelines loaded.",
    )
    for name in (*CORE, *PIPELINE):
        part = "core" if name in CORE else "pipelines"
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        table.rows.append([LABELS[name], part, f"{median(rates[name]):.1f}", runs])
    core = sum(median(rates[n]) for n in CORE)
    extra = sum(median(rates[n]) for n in PIPELINE)
    table.rows.append(["**all core components**", "core", f"**{core:.1f}**", ""])
    table.rows.append(["**all pipeline components**", "pipelines", f"**{extra:.1f}**", ""])
    return Section(
        key="pipeline-idle",
        title="Pipelines: idle CPU of the pipeline components",
        intro=__doc__.split("\n\n")[1].strip() if __doc__ else "",
        command="python -m bench --only pipeline-idle --merge",
        tables=[table],
        goals=[
            Goal(
                "idle CPU of the pipeline components (Tansu, model gateway, dataflow engine)",
                f"{extra:.1f} ms/s (core components: {core:.1f} ms/s)",
                None,
                verdict_text="shown (the issue sets no bound)",
            )
        ],
        notes=[
            "ms/s: milliseconds of CPU per second of wall time (1,000 ms/s is one core busy). "
            "CPU time is what the process used, whatever else ran on the machine, so this figure holds "
            "on a shared machine better than latencies do.",
            "The model gateway and the dataflow engine poll Kafka (long-poll fetches, consumer-group "
            "heartbeats, the Chainer and status streams); Tansu answers those polls.",
        ],
        seconds=time.monotonic() - started,
    )


# -- data plane with and without the pipeline components -----------------------------------------------


@dataclass
class Measured:
    closed: dict[tuple[str, str, str], list[Result]]  # (state, proto, target) -> runs
    opened: dict[tuple[str, str, str], list[Result]]
    own: OwnTimes = field(default_factory=OwnTimes)  # the open-loop runs' windows


async def run_dataplane(work: Path, quick: bool = False) -> Section:
    settings = dataplane.Settings(rounds=2, seconds=2.0) if quick else dataplane.Settings(rounds=4)
    pairs, open_pairs = (1, 1) if quick else (PAIRS_PER_STATE, OPEN_PAIRS_PER_STATE)
    started = time.monotonic()
    train.ensure_artifacts()
    config = _config(work)
    chosen = {c.name: c for c in components(config)}
    measured = Measured({}, {})
    with processes(work / "logs") as group:
        mesh = await start_mesh(group, config, CORE)
        targets = await _targets(group, work, mesh)
        async with grpc.aio.insecure_channel(mesh.scheduler_address) as channel:
            # loaded once, before any round: "without" differs from "with" only by the processes
            await pipelines._setup(scheduler_pb2_grpc.SchedulerStub(channel))
        bodies = dataplane._bodies(work)
        await dataplane._check(targets)
        await dataplane._warm_up(targets, bodies)
        rates: dict[str, float] = {}
        for round_no in range(settings.rounds):
            for state in ("without", "with") if round_no % 2 == 0 else ("with", "without"):
                extra: dict[str, Process] = {}
                if state == "with":
                    extra = await start_components(group, config, [chosen[n] for n in PIPELINE])
                    await _load_pipelines(config, mesh.url, setup=False)
                    # past the readiness traffic and the consumer groups' first rebalances (~2 sessions)
                    await asyncio.sleep(SETTLE_SECONDS)
                for pair in range(open_pairs):
                    # which target goes first alternates, so a trend within a state favours neither
                    order = list(targets) if (round_no + pair) % 2 == 0 else list(reversed(targets))
                    await _measure_round(state, order, bodies, settings, rates, measured, closed=pair < pairs)
                for process in reversed(extra.values()):
                    group.stop(process)
    own_ms = measured.own.medians_ms(dataplane.access_logs(targets))  # flushed: the Envoys stopped
    section = Section(
        key="dataplane-pipelines",
        title="Pipelines: the data-plane figures with the pipeline components running",
        intro=__doc__.split("\n\n")[2].strip() if __doc__ else "",
        command="python -m bench --only dataplane-pipelines --merge",
    )
    _tabulate(section, targets, measured, own_ms, rates, settings, pairs, open_pairs)
    section.seconds = time.monotonic() - started
    return section


async def _targets(group: Processes, work: Path, mesh: Mesh) -> list[dataplane.Target]:
    """meshserve's Envoy (iris loaded and routed) and a static Envoy in front of the same MLServer."""
    async with grpc.aio.insecure_channel(mesh.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=payloads.model("iris")), timeout=10)
    targets, _ = await dataplane.start_static(group, work, mesh)
    return [t for t in targets if t.key != "direct"]


async def _measure_round(
    state: str,
    targets: Sequence[dataplane.Target],
    bodies: dict[str, Path],
    settings: dataplane.Settings,
    rates: dict[str, float],
    measured: Measured,
    *,
    closed: bool,
) -> None:
    for proto in ("REST", "gRPC"):
        for target in targets if closed else ():
            result = await dataplane._closed(proto, target, bodies, settings)
            measured.closed.setdefault((state, proto, target.key), []).append(result)
        # the open-loop rate: 25% of the static Envoy's throughput in the first round measured
        rates.setdefault(
            proto, settings.open_load_fraction * measured.closed[(state, proto, "static")][0].rps
        )
        for target in targets:
            with measured.own.run((state, proto, target.key), loadgen.WARM_UP_S):
                result = await dataplane._open(proto, target, bodies, settings, rates[proto])
            measured.opened.setdefault((state, proto, target.key), []).append(result)


def _tabulate(
    section: Section,
    targets: Sequence[dataplane.Target],
    measured: Measured,
    own_ms: dict[tuple[str, ...], list[float]],
    rates: dict[str, float],
    settings: dataplane.Settings,
    pairs: int,
    open_pairs: int,
) -> None:
    def rps(state: str, proto: str, key: str) -> float:
        return median([r.rps for r in measured.closed[(state, proto, key)]])

    def p50(state: str, proto: str, key: str) -> float:
        return median([r.p50_ms for r in measured.opened[(state, proto, key)]])

    def rates_of(state: str, proto: str, key: str) -> list[float]:
        return [r.rps for r in measured.closed[(state, proto, key)]]

    def p50s(state: str, proto: str, key: str) -> list[float]:
        return [r.p50_ms for r in measured.opened[(state, proto, key)]]

    for proto in ("REST", "gRPC"):
        table = Table(
            [
                "pipeline components",
                "target",
                "closed-loop req/s (runs)",
                "vs static Envoy",
                f"open loop @ {rates[proto]:.0f} req/s: p50",
                "p99",
                "p50 - static",
                "Envoy's own time (median)",
                "errors",
            ],
            caption=f"**{proto}**",
        )
        for state in ("without", "with"):
            for target in targets:
                runs = measured.closed[(state, proto, target.key)]
                opens = measured.opened[(state, proto, target.key)]
                ratio, _ = paired_ratio(rates_of(state, proto, target.key), rates_of(state, proto, "static"))
                delta, _ = paired_difference(p50s(state, proto, target.key), p50s(state, proto, "static"))
                table.rows.append(
                    [
                        "running, pipelines loaded" if state == "with" else "not running",
                        target.label,
                        f"{rps(state, proto, target.key):,.0f} ({', '.join(f'{r.rps:,.0f}' for r in runs)})",
                        f"{ratio:.3f}",
                        f"{p50(state, proto, target.key):.3f} ms",
                        f"{median([r.p99_ms for r in opens]):.3f} ms",
                        f"{delta:+.3f} ms",
                        f"{median(own_ms[(state, proto, target.key)]) * 1000:.0f} µs",
                        str(sum(r.errors for r in runs + opens)),
                    ]
                )
        section.tables.append(table)
        without_ratio, _ = paired_ratio(
            rates_of("without", proto, "meshserve"), rates_of("without", proto, "static")
        )
        without_delta, _ = paired_difference(
            p50s("without", proto, "meshserve"), p50s("without", proto, "static")
        )
        goals = dataplane.paired_goals(
            proto,
            rates_of("with", proto, "meshserve"),
            rates_of("with", proto, "static"),
            p50s("with", proto, "meshserve"),
            p50s("with", proto, "static"),
            suffix=", pipeline components running",
        )
        goals[0].measured += f"; without them: {without_ratio:.3f}"
        goals[1].measured += f"; without them: {without_delta:+.3f} ms"
        section.goals += goals
        change = rps("with", proto, "meshserve") / rps("without", proto, "meshserve")
        moved = p50("with", proto, "meshserve") - p50("without", proto, "meshserve")
        own = {
            state: dataplane.own_time_difference(
                own_ms[(state, proto, "meshserve")], own_ms[(state, proto, "static")]
            )
            for state in ("with", "without")
        }
        section.notes.append(
            f"{proto}: meshserve with the pipeline components running served {change:.3f} x its "
            f"throughput without them; p50 {moved:+.3f} ms. Envoy's own time per request (section 1's "
            f"note), meshserve's less the static Envoy's: {own['with']} with the pipeline components "
            f"running, {own['without']} without them."
        )
    section.notes += [
        "Goals as in figure 1 (section 1), judged with the pipeline components running: the static "
        "Envoy shares the machine with them too, so the ratios say what meshserve's own data path "
        "does, and the with/without rows say what the pipeline components' presence costs.",
        f"{settings.rounds} rounds, the order of the two states alternating, {pairs} closed-loop and "
        f"{open_pairs} open-loop paired runs of each target per state and round; {settings.seconds:g} s "
        "per run. Ratios and differences against the static Envoy are paired (each pair's runs are "
        "adjacent in time), then the median over pairs; a p50 bound is judged on the 90 % interval of "
        "that median (section 1). "
        "Open loop: h2load `--rps` per client with "
        f"{settings.open_clients} clients. 2-core machine shared with other work: compare within one run.",
    ]
