"""Figure - overcommit: the reload of an evicted model through Envoy, and what overcommit costs a
resident model.

Two meshserve stacks in one run, identical but for overcommit: **on** (the agent's reload listener
at Envoy priority 1, `previous_priorities` retries, room for 3 iris models and 12 assigned) and
**off** (overcommit 0: one priority). Resident path: `iris` on both, REST (wrk) and gRPC (h2load)
closed loop, rounds interleaved (on/off order alternates), each round on freshly started stacks
(iris loaded and called last, so it is resident), medians. Reload: on the *on* stack, ten more
iris models called in turn, one request at a time from a Python client, so every call finds its
model evicted (room for 3): Envoy → MLServer 404 → agent → reload → MLServer; compared with the
same client's calls to the resident `iris` in the same loop.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import aiohttp
import grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from bench import loadgen, payloads
from bench.loadgen import Result, median, percentile
from bench.mesh import Mesh, bench_config, start_mesh
from bench.procs import processes, wait_for
from bench.report import Goal, Section, Table, ms
from samples import train

IRIS_BYTES = 1_000_000
EVICTABLE = [f"evictable{n}" for n in range(10)]
REST_HEADERS = {"content-type": "application/json"}
GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers", "seldon-model": "iris"}


async def run(work: Path, quick: bool = False) -> Section:
    rounds, seconds, reloads = (2, 2.0, 20) if quick else (12, 2.0, 100)
    started = time.monotonic()
    train.ensure_artifacts()
    section = Section(
        key="overcommit",
        title="8. Overcommit: reload of an evicted model, resident path on vs off",
        intro=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip()
        + f" {rounds} rounds, each on two freshly started stacks; each {seconds:g} s at 1 connection"
        f" (latency) and 4 (throughput); {reloads} reloads.",
        command="python -m bench --only overcommit",
    )
    grpc_body = _grpc_body(work)
    closed: dict[tuple[str, str, int], list[Result]] = {}
    reload_ms: list[float] = []
    resident_ms: list[float] = []
    counts = (0.0, 0.0)
    for round_no in range(rounds):
        # Fresh processes every round: two stacks differ by more than the goal from where their
        # processes happen to run (measured ±0.3 ms p50 between rounds of one pair), so that bias
        # must average out over rounds instead of being measured once.
        with processes(work / "logs" / str(round_no)) as group:
            meshes = {}
            for key, overcommit in (("on", 300), ("off", 0)):
                home = work / f"{key}-{round_no}"
                config = bench_config(home, server_memory=3 * IRIS_BYTES, overcommit_percent=overcommit)
                meshes[key] = await start_mesh(group, config, ("scheduler", "envoy", "mlserver", "agent"))
                # iris last: each readiness check of a model reloads it if evicted, so on room for 3
                # the model checked first would be evicted again by the later ones, and the first
                # "resident" requests timed would be a reload.
                await _load(meshes[key], [*(EVICTABLE if overcommit else []), "iris"])
            order = ["on", "off"] if round_no % 2 == 0 else ["off", "on"]
            for key in order:
                for connections in (1, 4):  # 1: latency without queueing; 4: throughput
                    for proto, result in await _closed(meshes[key], grpc_body, connections, seconds):
                        closed.setdefault((proto, key, connections), []).append(result)
            if round_no == rounds - 1:
                reload_ms, resident_ms, counts = await _reloads(meshes["on"], reloads)
    _tabulate(section, closed, reload_ms, resident_ms, counts)
    section.seconds = time.monotonic() - started
    return section


def _grpc_body(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return payloads.write(work / "iris.grpc", payloads.grpc_frame("iris"))


async def _closed(mesh: Mesh, grpc_body: Path, connections: int, seconds: float) -> list[tuple[str, Result]]:
    rest = await loadgen.wrk(
        f"{mesh.url}/v2/models/iris/infer",
        payloads.IRIS_REST,
        REST_HEADERS,
        connections=connections,
        seconds=seconds,
    )
    grpc_result = await loadgen.h2load(
        f"{mesh.url}{payloads.GRPC_PATH}", grpc_body, GRPC_HEADERS, clients=connections, seconds=seconds
    )
    return [("REST", rest), ("gRPC", grpc_result)]


async def _load(mesh: Mesh, names: list[str]) -> None:
    async with grpc.aio.insecure_channel(mesh.scheduler_address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for name in names:
            model = payloads.model(name, memory_bytes=IRIS_BYTES)
            await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=10)
        async with aiohttp.ClientSession() as session:
            for name in names:
                check = functools.partial(_answers, session, mesh, name)
                await wait_for(check, within=30, what=f"{name} served")


async def _answers(session: aiohttp.ClientSession, mesh: Mesh, name: str) -> bool:
    async with session.post(
        f"{mesh.url}/v2/models/{name}/infer", data=payloads.IRIS_REST, headers=REST_HEADERS
    ) as response:
        await response.read()
        return response.status == 200


async def _reloads(mesh: Mesh, count: int) -> tuple[list[float], list[float], tuple[float, float]]:
    """Call the evictable models in turn (each finds its model evicted), the resident one between."""
    reload_ms: list[float] = []
    resident_ms: list[float] = []
    async with aiohttp.ClientSession() as session:
        before = await _cache_counts(session, mesh)
        for n in range(count):
            for name, into in ((EVICTABLE[n % len(EVICTABLE)], reload_ms), ("iris", resident_ms)):
                started = time.perf_counter()
                if not await _answers(session, mesh, name):
                    raise RuntimeError(f"{name} did not answer 200")
                into.append((time.perf_counter() - started) * 1000)
        after = await _cache_counts(session, mesh)
    return reload_ms, resident_ms, (after[0] - before[0], after[1] - before[1])


async def _cache_counts(session: aiohttp.ClientSession, mesh: Mesh) -> tuple[float, float]:
    async with session.get(f"http://127.0.0.1:{mesh.config.agent_metrics_port}/metrics") as response:
        text = await response.text()
    values = {
        line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "{" in line
    }
    return values["seldon_cache_evict_count"], values["seldon_cache_miss_count"]


def _tabulate(
    section: Section,
    closed: dict[tuple[str, str, int], list[Result]],
    reload_ms: list[float],
    resident_ms: list[float],
    counts: tuple[float, float],
) -> None:
    reload_p50, reload_p99 = percentile(reload_ms, 50), percentile(reload_ms, 99)
    table = Table(["path", "overcommit", "p50 (1 conn)", "p99 (1 conn)", "req/s (4 conns)"])
    p50 = {}
    rps = {}
    for proto in ("REST", "gRPC"):
        for key in ("off", "on"):
            latency, load = closed[(proto, key, 1)], closed[(proto, key, 4)]
            p50[(proto, key)] = median([r.p50_ms for r in latency])
            rps[(proto, key)] = median([r.rps for r in load])
            table.rows.append(
                [
                    f"{proto} resident",
                    key,
                    ms(p50[(proto, key)]),
                    ms(median([r.p99_ms for r in latency])),
                    f"{rps[(proto, key)]:.0f}",
                ]
            )
    section.tables.append(table)
    reload_table = Table(["calls (one at a time, Python client)", "n", "p50", "p99"])
    reload_table.rows.append(
        ["evicted model (reload through the agent)", str(len(reload_ms)), ms(reload_p50), ms(reload_p99)]
    )
    reload_table.rows.append(
        [
            "resident model, same loop",
            str(len(resident_ms)),
            ms(percentile(resident_ms, 50)),
            ms(percentile(resident_ms, 99)),
        ]
    )
    section.tables.append(reload_table)
    section.goals.append(
        Goal("reload of an evicted iris model through Envoy, p50 ≤ 150 ms", ms(reload_p50), reload_p50 <= 150)
    )
    for proto in ("REST", "gRPC"):
        # Paired by round: the two stacks of a round share its conditions, and rounds differ by more
        # than the goal, so the median of the rounds' differences is the estimate.
        pairs = list(zip(closed[(proto, "on", 1)], closed[(proto, "off", 1)], strict=True))
        deltas = [on.p50_ms - off.p50_ms for on, off in pairs]
        delta = median(deltas)
        loads = zip(closed[(proto, "on", 4)], closed[(proto, "off", 4)], strict=True)
        ratio = median([on.rps / off.rps for on, off in loads])
        per_round = ", ".join(f"{d:+.2f}" for d in deltas)
        section.goals.append(
            Goal(
                f"{proto} resident p50, overcommit on vs off: within +0.1 ms",
                f"{delta:+.3f} ms, median of each round's pair ({per_round}); throughput {ratio:.2f}x",
                delta <= 0.1,
            )
        )
    section.notes.append(
        f"The agent counted {counts[0]:.0f} evictions and {counts[1]:.0f} misses during the reload loop."
    )
    section.notes.append(
        "Why fresh stacks each round and paired differences: with one pair of stacks for the whole run, "
        "the verdict flipped between runs (REST +0.01 to +0.32 ms, gRPC -0.88 to +0.65 ms) while Envoy's "
        "and MLServer's CPU per request did not differ; the bias between two stacks' processes is larger "
        "than the goal, so it must average out over rounds. The agent no longer reads MLServer's "
        "repository index every 2 s (MLServer builds it by parsing every model's settings on disk inside "
        "its event loop: 3.4 ms with one model there, 27 ms with eleven, which stalled the resident path "
        "with overcommit on); it probes a few held models' readiness in turn."
    )
    section.notes.append(
        "2 cores shared by both stacks, the generators and other work on the machine: medians of "
        "interleaved rounds; differences under ~0.1 ms or ~5 % are within this machine's noise."
    )
