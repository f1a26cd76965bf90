"""Figure 6 - experiments: how fast a split goes live, what a split and a mirror cost on the data plane.

One real stack (scheduler, Envoy, MLServer, agent; the mirror model on a second server replica)
and two static Envoys in front of the stack's MLServer, every model serving the iris artifact:

(a) *Time to split*: ``StartExperiment`` for a 50/50 experiment on a fresh name, then REST through
    Envoy with ``seldon-model: <e>.experiment`` every ~1 ms until it answers 200 and both variants
    have answered (``x-seldon-route``); a ``SubscribeExperimentStatus`` stream timestamps when the
    status says active; then ``StopExperiment`` until the endpoint answers 404. A plain model's
    LoadModel → first 200 (``bench.time_to_route``) is interleaved for comparison.
(b) *A 50/50 experiment on the data plane*: the default model of an active 50/50 experiment
    (takeover: its own endpoint splits over two candidates) against the static Envoy and a plain
    meshserve model, closed loop (wrk / h2load) and open loop (h2load ``--rps``), interleaved.
(c) *A 100 % mirror*: open loop at the same fixed rate, the default model of an experiment that
    mirrors every request to a second model, against a plain model; the static Envoy with a direct
    ``request_mirror_policies`` copy to MLServer (no second routing pass) against itself without
    one is the floor any mirror pays. Envoy's and MLServer's CPU per request come from ``/proc``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from bench import envoys, loadgen, payloads, time_to_route
from bench.loadgen import Result, median, percentile
from bench.mesh import Mesh, bench_config, start_components, start_mesh
from bench.procs import CLOCK_TICKS, Process, Processes, processes, wait_for
from bench.report import Goal, Section, Table
from samples import train
from stack.components import ReplicaPorts, server_replica
from stack.ports import free_ports
from stack.probes import port_open
from stack.server_spec import default_spec

PLAIN = "iris"  # a plain model: no experiment on it
CAND_A, CAND_B = "exp-a", "exp-b"  # candidates of the 50/50 experiment; exp-a is its default
PRIMARY, SHADOW = "mirrored", "shadow"  # default of the mirroring experiment, and its mirror
SHADOW_SERVER = "shadow-server"  # a second server replica (its own MLServer + agent) hosting SHADOW
MODELS = (PLAIN, CAND_A, CAND_B, PRIMARY, SHADOW)
SPLIT_EXPERIMENT, MIRROR_EXPERIMENT = "ab", "shadowing"
POLL_INTERVAL_S = 0.001
PROTOS = ("REST", "gRPC")
THROUGHPUT_SPREAD = 1.25
"""Largest max / min over one target's runs (throughput, p50) for which a verdict is given."""
P99_SPREAD = 1.5
"""The same for p99 (a tail percentile of a few thousand requests moves more run to run)."""


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    port: int
    model: str  # the name in the path and the gRPC body
    headers: dict[str, str] = field(default_factory=dict)
    proxy: Process | None = None  # the Envoy whose CPU is recorded

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{self.model}/infer"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{payloads.GRPC_PATH}"


@dataclass
class Settings:
    starts: int = 20
    plain_loads: int = 10
    rounds: int = 3
    closed_seconds: float = 3.0
    open_seconds: float = 4.0
    connections: int = 4
    open_clients: int = 4
    open_load_fraction: float = 0.25


@dataclass
class StartSample:
    name: str
    rpc_ms: float = 0.0
    first_200_ms: float = 0.0
    both_ms: float = 0.0
    active_ms: float = float("nan")
    stop_404_ms: float = 0.0
    polls: int = 0
    ok_before_both: int = 0  # 200s from one arm before the other arm first answered


@dataclass
class OpenRun:
    result: Result
    envoy_cpu_us: float  # per request served
    mlserver_cpu_us: float
    machine_cores: float  # busy cores of the whole machine during the run


async def run(work: Path, quick: bool = False) -> Section:
    settings = (
        Settings(starts=5, plain_loads=2, rounds=2, closed_seconds=1.0, open_seconds=1.5)
        if quick
        else Settings()
    )
    started = time.monotonic()
    train.ensure_artifacts()
    section = Section(
        key="experiments",
        title="6. Experiments",
        intro=(
            "One stack (scheduler, Envoy, MLServer, agent; plus a second server replica, MLServer and agent, "
            f"for the mirror model `{SHADOW}`) and two static Envoys in front of the stack's "
            "MLServer; every model serves the iris artifact. (a) *Time to split*: `StartExperiment` for a "
            f"50/50 experiment on a fresh name ({settings.starts} times), then REST through Envoy with "
            f"`seldon-model: <e>.experiment` every {POLL_INTERVAL_S * 1000:g} ms until a 200 and until "
            "both variants have answered; a `SubscribeExperimentStatus` stream timestamps `active`; then "
            "`StopExperiment` until the endpoint answers 404. (b) *A 50/50 experiment on the data plane*: "
            f"requests to `{CAND_A}`, the default of an active 50/50 experiment over `{CAND_A}` and "
            f"`{CAND_B}` (takeover: its own endpoint splits), against the static Envoy and a plain "
            "meshserve model, with figure 1's generators and settings (closed loop: "
            f"{settings.connections} connections, {settings.closed_seconds:g} s; open loop: "
            f"{settings.open_clients} clients x `--rps`, total = {settings.open_load_fraction:.0%} of the "
            f"static Envoy's closed-loop throughput, {settings.open_seconds:g} s). (c) *A 100 % mirror*: "
            f"open loop at that rate on `{PRIMARY}`, the default of an experiment mirroring 100 % to "
            f"`{SHADOW}` (a `RequestMirrorPolicy` to the loop-back cluster, routed again as "
            f"`seldon-model: {SHADOW}.mirror`; `{SHADOW}` on a second server replica, its own MLServer and "
            "agent, as a shadow model runs in production), against the plain model; and the static Envoy "
            "with a direct mirror to the primary's MLServer (no second routing pass) against the static "
            "Envoy. "
            f"{settings.rounds} rounds, targets interleaved (start rotates each round); medians shown."
        ),
        command="python -m bench --only experiments --merge",
    )
    with processes(work / "logs") as group:
        mesh, static, static_mirror, ceiling, shadow_metrics_port = await _start(group, work)
        async with (
            grpc.aio.insecure_channel(mesh.scheduler_address) as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            for name in MODELS:
                await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=_model(mesh, name)), timeout=10)
            for name in MODELS:
                await wait_for(
                    functools.partial(_answers, session, mesh.url, name, name),
                    within=60,
                    what=f"{name} routable",
                    interval=0.05,
                )
            starts, plain = await _time_to_split(mesh, stub, session, settings)
            await _start_active(stub, _experiment(SPLIT_EXPERIMENT, [(CAND_A, 50), (CAND_B, 50)], CAND_A))
            await _start_active(
                stub, _experiment(MIRROR_EXPERIMENT, [(PRIMARY, 100)], PRIMARY, mirror=(SHADOW, 100))
            )
            mp = mesh.procs["envoy"]
            closed_targets = [
                Target("static", "static Envoy", static[0], "iris_1", proxy=static[1]),
                Target("plain", "meshserve, plain model", mesh.config.http_port, PLAIN, _h(PLAIN), mp),
                Target("split", "meshserve, 50/50 experiment", mesh.config.http_port, CAND_A, _h(CAND_A), mp),
            ]
            mirror_targets = [
                Target("static-mirror", "static Envoy + direct mirror", static_mirror[0], "iris_1",
                       proxy=static_mirror[1]),
                Target("mirror", "meshserve, 100 % mirror", mesh.config.http_port, PRIMARY, _h(PRIMARY), mp),
            ]  # fmt: skip
            open_targets = closed_targets + mirror_targets
            bodies = _bodies(work, open_targets)
            split_seen = await _check(session, open_targets)
            await _warm_up(open_targets, bodies)
            watched = [(mesh.config.mlserver_metrics_port, PRIMARY), (shadow_metrics_port, SHADOW)]
            served_before = [await _served(session, port, f"{m}_1") for port, m in watched]
            closed, closed_cpu = await _closed_rounds(closed_targets, bodies, settings)
            rates = {
                p: settings.open_load_fraction * median([r.rps for r in closed[(p, "static")]])
                for p in PROTOS
            }
            mlservers = [mesh.procs["mlserver"], mesh.procs[f"mlserver-{SHADOW_SERVER}-0"]]
            opened = await _open_rounds(open_targets, bodies, settings, rates, mlservers)
            generator = await _generator_ceiling(ceiling, bodies, settings)
            served = [
                await _served(session, port, f"{m}_1") - before
                for (port, m), before in zip(watched, served_before, strict=True)
            ]
            await stub.StopExperiment(scheduler_pb2.StopExperimentRequest(name=MIRROR_EXPERIMENT), timeout=10)
            await stub.StopExperiment(scheduler_pb2.StopExperimentRequest(name=SPLIT_EXPERIMENT), timeout=10)
    _tabulate_starts(section, starts, plain)
    _tabulate_dataplane(section, closed_targets, closed, closed_cpu, opened, rates, split_seen)
    _tabulate_mirror(section, opened, rates, served[0], served[1])
    _tabulate_generator(section, generator, settings)
    section.notes += [
        "Everything (generators, three Envoys, MLServer, scheduler, agent) shares this machine's 2 cores, "
        "and other engineers' test runs were using them too (load average in the note below): absolute "
        "figures move from run to run, so compare only within a row group of one run (ratios and "
        "differences against the baseline measured in the same rounds).",
        f"This section was run on its own ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
        f"average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at the end) and merged into the page "
        "(`--merge`): the machine table at the top belongs to the run of the other sections.",
    ]
    section.seconds = time.monotonic() - started
    return section


def _h(model: str) -> dict[str, str]:
    return {"seldon-model": model}


# -- processes ----------------------------------------------------------------------------------


async def _start(
    group: Processes, work: Path
) -> tuple[Mesh, tuple[int, Process], tuple[int, Process], Target, int]:
    config = bench_config(work / "mesh")
    mesh = await start_mesh(group, config, ("scheduler", "envoy", "mlserver", "agent"))
    # The mirror model gets a replica of its own, as a shadow would in production: its inference
    # must not queue behind the primary's in one MLServer process.
    shadow_ports = ReplicaPorts(*free_ports(3))
    shadow = server_replica(config, shadow_ports, server=SHADOW_SERVER, idx=0, spec=default_spec(config))
    mesh.procs.update(await start_components(group, config, shadow))
    binary = config.binary("envoy")
    port, admin, m_port, m_admin, up_port, up_admin = free_ports(6)
    static_cfg = envoys.write_static_proxy(
        work / "static-envoy.json",
        admin_port=admin,
        port=port,
        http_upstream=config.mlserver_http_port,
        grpc_upstream=config.mlserver_grpc_port,
    )
    mirror_cfg = _with_direct_mirror(
        envoys.write_static_proxy(
            work / "static-mirror-envoy.json",
            admin_port=m_admin,
            port=m_port,
            http_upstream=config.mlserver_http_port,
            grpc_upstream=config.mlserver_grpc_port,
        )
    )
    upstream_cfg = envoys.write_direct_response(
        work / "upstream-envoy.json", admin_port=up_admin, port=up_port
    )
    static = group.start("static-envoy", envoys.envoy_argv(binary, static_cfg, admin))
    static_mirror = group.start("static-mirror-envoy", envoys.envoy_argv(binary, mirror_cfg, m_admin))
    upstream = group.start("upstream-envoy", envoys.envoy_argv(binary, upstream_cfg, up_admin))
    for p, proc in ((port, static), (m_port, static_mirror), (up_port, upstream)):
        await wait_for(functools.partial(port_open, "127.0.0.1", p), within=30, what="envoy", alive=[proc])
    ceiling = Target("ceiling", "Envoy direct_response", up_port, "iris_1", proxy=upstream)
    return mesh, (port, static), (m_port, static_mirror), ceiling, shadow_ports.metrics


def _model(mesh: Mesh, name: str) -> scheduler_pb2.Model:
    """Every model on the stack's own server, but the mirror on the shadow server."""
    model = payloads.model(name)
    model.modelSpec.server = SHADOW_SERVER if name == SHADOW else mesh.config.server_name
    return model


def _with_direct_mirror(path: Path) -> Path:
    """The static proxy, each route also copying 100 % of requests to its own cluster (MLServer):
    a mirror with no second routing pass (the copy infers on iris_1 again)."""
    config = json.loads(path.read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        action = route["route"]
        action["request_mirror_policies"] = [
            {
                "cluster": action["cluster"],
                "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            }
        ]
    path.write_text(json.dumps(config, indent=1))
    return path


def _experiment(
    name: str,
    candidates: list[tuple[str, int]],
    default: str | None = None,
    *,
    mirror: tuple[str, int] | None = None,
) -> scheduler_pb2.StartExperimentRequest:
    built = scheduler_pb2.Experiment(
        name=name, candidates=[scheduler_pb2.ExperimentCandidate(name=n, weight=w) for n, w in candidates]
    )
    if default is not None:
        built.default = default
    if mirror is not None:
        built.mirror.name, built.mirror.percent = mirror
    return scheduler_pb2.StartExperimentRequest(experiment=built)


async def _status(stub: scheduler_pb2_grpc.SchedulerAsyncStub, name: str) -> bool:
    request = scheduler_pb2.ExperimentStatusRequest(subscriberName="bench", name=name)
    async for reply in stub.ExperimentStatus(request, timeout=5):
        return bool(reply.active)
    return False


async def _start_active(
    stub: scheduler_pb2_grpc.SchedulerAsyncStub, request: scheduler_pb2.StartExperimentRequest
) -> None:
    await stub.StartExperiment(request, timeout=10)
    name = request.experiment.name
    await wait_for(functools.partial(_status, stub, name), within=30, what=f"experiment {name} active")


async def _answers(session: aiohttp.ClientSession, url: str, model: str, header: str) -> bool:
    try:
        async with session.post(
            f"{url}/v2/models/{model}/infer",
            data=payloads.IRIS_REST,
            headers={"seldon-model": header, "content-type": "application/json"},
        ) as response:
            await response.read()
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def _served(session: aiohttp.ClientSession, metrics_port: int, model: str) -> float:
    """Successful inferences of a model version, from the metrics of the MLServer serving it."""
    async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    pattern = re.compile(
        r'^model_infer_request_success_total\{[^}]*model="' + re.escape(model) + r'"[^}]*\} (\S+)$'
    )
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


# -- (a) time to split ----------------------------------------------------------------------------


_AGENT_LOADED = re.compile(
    r"""event=(?:'model loaded'|"model loaded") model='?([^' ]+)'? version=\d+ duration_s=([0-9.]+)"""
)
"""The agent's load time; its log line in either renderer (logfmt now, key='value' before)."""


class _ExperimentWatcher:
    """SubscribeExperimentStatus: when each experiment was first reported active (arrival here)."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
        self._stub = stub
        self.active: dict[str, float] = {}

    async def run(self) -> None:
        request = scheduler_pb2.ExperimentSubscriptionRequest(subscriberName="bench")
        async for reply in self._stub.SubscribeExperimentStatus(request):
            if reply.active:
                self.active.setdefault(reply.experimentName, time.monotonic())


async def _time_to_split(
    mesh: Mesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    session: aiohttp.ClientSession,
    settings: Settings,
) -> tuple[list[StartSample], list[time_to_route.Sample]]:
    experiments = _ExperimentWatcher(stub)
    models = time_to_route._Watcher(stub)
    tasks = [asyncio.create_task(experiments.run()), asyncio.create_task(models.run())]
    starts: list[StartSample] = []
    plain: list[time_to_route.Sample] = []
    try:
        await asyncio.sleep(0.3)
        await _one_start(mesh, stub, session, experiments, "start-warmup")
        await time_to_route._one(mesh, stub, session, models, "plain-warmup")
        every = max(1, settings.starts // max(settings.plain_loads, 1))
        for i in range(settings.starts):
            starts.append(await _one_start(mesh, stub, session, experiments, f"start-{i}"))
            if i % every == 0 and len(plain) < settings.plain_loads:
                plain.append(await time_to_route._one(mesh, stub, session, models, f"plain-{i}"))
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    agent_log = mesh.procs["agent"].log.read_text()
    loads = {m.group(1): float(m.group(2)) * 1000 for m in _AGENT_LOADED.finditer(agent_log)}
    for sample in plain:
        sample.agent_load_ms = loads.get(sample.name, float("nan"))
    return starts, plain


async def _one_start(
    mesh: Mesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    session: aiohttp.ClientSession,
    watcher: _ExperimentWatcher,
    name: str,
) -> StartSample:
    sample = StartSample(name)
    endpoint = f"{name}.experiment"
    url = f"{mesh.url}/v2/models/{endpoint}/infer"
    headers = {"seldon-model": endpoint, "content-type": "application/json"}
    before = time.monotonic()
    await stub.StartExperiment(_experiment(name, [(CAND_A, 50), (CAND_B, 50)]), timeout=10)
    returned = time.monotonic()
    sample.rpc_ms = (returned - before) * 1000
    seen: set[str] = set()
    while len(seen) < 2:
        sample.polls += 1
        async with session.post(url, data=payloads.IRIS_REST, headers=headers) as response:
            await response.read()
            if response.status == 200:
                now = time.monotonic()
                if not seen:
                    sample.first_200_ms = (now - returned) * 1000
                seen.add(response.headers.get("x-seldon-route", ""))
                sample.ok_before_both += len(seen) < 2
                if len(seen) == 2:
                    sample.both_ms = (now - returned) * 1000
        if time.monotonic() - returned > 30:
            raise TimeoutError(f"{endpoint}: no 200 from both variants within 30 s (saw {seen})")
        await asyncio.sleep(POLL_INTERVAL_S)
    for _ in range(500):
        if name in watcher.active:
            sample.active_ms = (watcher.active[name] - returned) * 1000
            break
        await asyncio.sleep(0.002)
    stop_at = time.monotonic()
    await stub.StopExperiment(scheduler_pb2.StopExperimentRequest(name=name), timeout=10)
    while True:
        async with session.post(url, data=payloads.IRIS_REST, headers=headers) as response:
            await response.read()
            if response.status == 404:
                sample.stop_404_ms = (time.monotonic() - stop_at) * 1000
                break
        if time.monotonic() - stop_at > 30:
            raise TimeoutError(f"{endpoint} still routed 30 s after StopExperiment")
        await asyncio.sleep(POLL_INTERVAL_S)
    return sample


# -- (b), (c) load ----------------------------------------------------------------------------------


def _bodies(work: Path, targets: list[Target]) -> dict[str, Path]:
    bodies = {"rest": payloads.write(work / "iris.json", payloads.IRIS_REST)}
    for model in {t.model for t in targets} | {"iris_1"}:
        bodies[model] = payloads.write(work / f"{model}.grpc", payloads.grpc_frame(model))
    return bodies


async def _check(session: aiohttp.ClientSession, targets: list[Target]) -> dict[str, int]:
    """Every target answers a real prediction over REST and gRPC; the split target from both arms."""
    routes: collections.Counter[str] = collections.Counter()
    for target in targets:
        calls = 60 if target.key == "split" else 1
        for _ in range(calls):
            async with session.post(
                target.rest_url,
                data=payloads.IRIS_REST,
                headers={"content-type": "application/json", **target.headers},
            ) as response:
                body = await response.json()
                if response.status != 200 or not body.get("outputs"):
                    raise RuntimeError(f"{target.label} REST check failed: {response.status} {body}")
                if target.key == "split":
                    routes[body["model_name"]] += 1
        async with grpc.aio.insecure_channel(f"127.0.0.1:{target.port}") as channel:
            stub = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(
                payloads.infer_request(target.model), metadata=tuple(target.headers.items()), timeout=10
            )
            if not reply.outputs:
                raise RuntimeError(f"{target.label} gRPC check failed: {reply}")
    if set(routes) != {f"{CAND_A}_1", f"{CAND_B}_1"}:
        raise RuntimeError(f"the 50/50 experiment did not split: {dict(routes)}")
    return dict(routes)


def _grpc_headers(target: Target) -> dict[str, str]:
    return {"content-type": "application/grpc", "te": "trailers", **target.headers}


def _rest_headers(target: Target) -> dict[str, str]:
    return {"content-type": "application/json", **target.headers}


async def _warm_up(targets: list[Target], bodies: dict[str, Path]) -> None:
    for target in targets:
        await loadgen.wrk(
            target.rest_url, payloads.IRIS_REST, _rest_headers(target), connections=2, seconds=1
        )
        await loadgen.h2load(
            target.grpc_url, bodies[target.model], _grpc_headers(target), clients=2, seconds=1, warm_up=0.1
        )


async def _closed(proto: str, target: Target, bodies: dict[str, Path], settings: Settings) -> Result:
    if proto == "REST":
        return await loadgen.wrk(
            target.rest_url,
            payloads.IRIS_REST,
            _rest_headers(target),
            connections=settings.connections,
            seconds=settings.closed_seconds,
        )
    return await loadgen.h2load(
        target.grpc_url,
        bodies[target.model],
        _grpc_headers(target),
        clients=settings.connections,
        seconds=settings.closed_seconds,
    )


async def _open(
    proto: str, target: Target, bodies: dict[str, Path], settings: Settings, rate: float
) -> Result:
    per_client = max(1.0, rate / settings.open_clients)
    rest = proto == "REST"
    return await loadgen.h2load(
        target.rest_url if rest else target.grpc_url,
        bodies["rest"] if rest else bodies[target.model],
        _rest_headers(target) if rest else _grpc_headers(target),
        clients=settings.open_clients,
        seconds=settings.open_seconds,
        h1=rest,
        rps_per_client=per_client,
    )


def _rotated(targets: list[Target], round_no: int) -> list[Target]:
    shift = round_no % len(targets)
    return targets[shift:] + targets[:shift]


async def _closed_rounds(
    targets: list[Target], bodies: dict[str, Path], settings: Settings
) -> tuple[dict[tuple[str, str], list[Result]], dict[tuple[str, str], list[float]]]:
    closed: dict[tuple[str, str], list[Result]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for round_no in range(settings.rounds):
        for proto in PROTOS:
            for target in _rotated(targets, round_no):
                assert target.proxy is not None
                before = target.proxy.cpu_seconds_precise()
                result = await _closed(proto, target, bodies, settings)
                used = target.proxy.cpu_seconds_precise() - before
                closed.setdefault((proto, target.key), []).append(result)
                cpu.setdefault((proto, target.key), []).append(used / max(result.requests, 1) * 1e6)
    return closed, cpu


async def _open_rounds(
    targets: list[Target],
    bodies: dict[str, Path],
    settings: Settings,
    rates: dict[str, float],
    mlservers: list[Process],
) -> dict[tuple[str, str], list[OpenRun]]:
    opened: dict[tuple[str, str], list[OpenRun]] = {}
    for round_no in range(settings.rounds):
        for proto in PROTOS:
            for target in _rotated(targets, round_no):
                assert target.proxy is not None
                envoy0, ml0, busy0, wall0 = (
                    target.proxy.cpu_seconds_precise(),
                    sum(_session_cpu(m.pid) for m in mlservers),
                    _machine_busy(),
                    time.monotonic(),
                )
                result = await _open(proto, target, bodies, settings, rates[proto])
                wall = time.monotonic() - wall0
                served = max(result.requests, 1)
                opened.setdefault((proto, target.key), []).append(
                    OpenRun(
                        result,
                        (target.proxy.cpu_seconds_precise() - envoy0) / served * 1e6,
                        (sum(_session_cpu(m.pid) for m in mlservers) - ml0) / served * 1e6,
                        (_machine_busy() - busy0) / wall,
                    )
                )
    return opened


async def _generator_ceiling(
    ceiling: Target, bodies: dict[str, Path], settings: Settings
) -> dict[str, Result]:
    return await loadgen.generator_ceiling(
        rest_url=ceiling.rest_url,
        rest_headers=_rest_headers(ceiling),
        grpc_url=ceiling.grpc_url,
        grpc_body=bodies["iris_1"],
        grpc_headers=_grpc_headers(ceiling),
        connections=settings.connections,
        seconds=min(settings.closed_seconds, 2.0),
    )


def _session_cpu(sid: int) -> float:
    """user + system CPU of every process in a session (a process and all it started), from /proc."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def _machine_busy() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


# -- tables ---------------------------------------------------------------------------------------


def _p(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.1f} ms"


def _tabulate_starts(section: Section, starts: list[StartSample], plain: list[time_to_route.Sample]) -> None:
    rows: list[tuple[str, list[float]]] = [
        ("StartExperiment RPC itself", [s.rpc_ms for s in starts]),
        ("**StartExperiment returned → first 200 on `<e>.experiment`**", [s.first_200_ms for s in starts]),
        ("StartExperiment returned → both variants have answered", [s.both_ms for s in starts]),
        (
            "StartExperiment returned → status `active` (SubscribeExperimentStatus)",
            [s.active_ms for s in starts],
        ),
        ("StopExperiment called → `<e>.experiment` answers 404", [s.stop_404_ms for s in starts]),
    ]
    if plain:
        rows += [
            ("plain model: LoadModel returned → first 200 (figure 2's method)", [s.total_ms for s in plain]),
            (
                "plain model: control-plane share (minus the agent's load)",
                [s.total_ms - s.agent_load_ms for s in plain],
            ),
        ]
    table = Table(
        ["", "samples", "p50", "p90", "p99", "max"],
        caption="**(a) Time to split**: times from the client side (one event loop polls and watches)",
    )
    for label, values in rows:
        table.rows.append(
            [label, str(len(values)), _p(values, 50), _p(values, 90), _p(values, 99), f"{max(values):.1f} ms"]
        )
    section.tables.append(table)
    first = [s.first_200_ms for s in starts]
    section.goals.append(
        Goal(
            "StartExperiment returned → 50/50 split live in Envoy, p50 / p99",
            f"{percentile(first, 50):.1f} / {percentile(first, 99):.1f} ms to the first 200 "
            f"({len(starts)} starts; both variants {percentile([s.both_ms for s in starts], 50):.1f} ms p50, "
            f"status active {percentile([s.active_ms for s in starts], 50):.1f} ms p50)",
            None,
            verdict_text="shown (the issue sets no bound)",
        )
    )
    section.notes += [
        f"(a) With {len(starts)} samples p99 is the largest but one (nearest rank). *First 200* includes "
        "that request's own round trip (an iris inference) and up to one poll interval; *both variants* "
        "adds however many requests it took for the 50/50 draw to hit the second arm (one arm answered "
        f"{median([float(s.ok_before_both) for s in starts]):g} times, at most "
        f"{max(s.ok_before_both for s in starts)}, before the other did). An experiment "
        "needs no model load, so its time to split is all control plane: the scheduler plans the routes, "
        "pushes the `<e>.experiment` scope over delta xDS and Envoy applies them; `active` comes "
        "after Envoy's ACK.",
    ]


def _tabulate_dataplane(
    section: Section,
    targets: list[Target],
    closed: dict[tuple[str, str], list[Result]],
    cpu: dict[tuple[str, str], list[float]],
    opened: dict[tuple[str, str], list[OpenRun]],
    rates: dict[str, float],
    split_seen: dict[str, int],
) -> None:
    for proto in PROTOS:
        floor_rps = median([r.rps for r in closed[(proto, "static")]])
        floor_p50 = median([r.result.p50_ms for r in opened[(proto, "static")]])
        table = Table(
            [
                "target",
                "closed-loop req/s (runs)",
                "vs static Envoy",
                "proxy CPU / req",
                f"open loop @ {rates[proto]:.0f} req/s: p50",
                "p99",
                "p50 - static",
                "errors",
            ],
            caption=f"**(b) {proto}: a 50/50 experiment on the benchmarked model**",
        )
        for target in targets:
            runs = closed[(proto, target.key)]
            rps = median([r.rps for r in runs])
            opens = [r.result for r in opened[(proto, target.key)]]
            p50 = median([r.p50_ms for r in opens])
            table.rows.append(
                [
                    target.label,
                    f"{rps:,.0f} ({', '.join(f'{r.rps:,.0f}' for r in runs)})",
                    f"{rps / floor_rps:.3f}",
                    f"{median(cpu[(proto, target.key)]):.0f} µs",
                    f"{p50:.3f} ms",
                    f"{median([r.p99_ms for r in opens]):.3f} ms",
                    f"{p50 - floor_p50:+.3f} ms",
                    str(sum(r.errors for r in runs + opens)),
                ]
            )
        section.tables.append(table)
        split_rps = median([r.rps for r in closed[(proto, "split")]])
        split_p50 = median([r.result.p50_ms for r in opened[(proto, "split")]])
        plain_rps = median([r.rps for r in closed[(proto, "plain")]])
        plain_p50 = median([r.result.p50_ms for r in opened[(proto, "plain")]])
        section.notes.append(
            f"(b) {proto}, the experiment against the plain model on the same Envoy (what the split itself "
            f"adds): throughput {split_rps / plain_rps:.3f} x, p50 {split_p50 - plain_p50:+.3f} ms, "
            f"proxy CPU {median(cpu[(proto, 'split')]) - median(cpu[(proto, 'plain')]):+.0f} µs per request."
        )
        section.goals += [
            _goal(
                f"(b) {proto} throughput, 50/50 experiment active ≥ 0.97 x static Envoy",
                f"{split_rps:,.0f} vs {floor_rps:,.0f} req/s = {split_rps / floor_rps:.3f}",
                split_rps >= 0.97 * floor_rps,
                [[r.rps for r in closed[(proto, k)]] for k in ("static", "split")],
                THROUGHPUT_SPREAD,
            ),
            _goal(
                f"(b) {proto} p50, 50/50 experiment active ≤ static Envoy + 0.2 ms",
                f"{split_p50:.3f} vs {floor_p50:.3f} ms ({split_p50 - floor_p50:+.3f} ms)",
                split_p50 <= floor_p50 + 0.2,
                [[r.result.p50_ms for r in opened[(proto, k)]] for k in ("static", "split")],
                THROUGHPUT_SPREAD,
            ),
        ]
    section.notes.append(
        f"(b) Before the runs, 60 REST calls to `{CAND_A}` were answered by "
        + " and ".join(f"`{k}` x {v}" for k, v in sorted(split_seen.items()))
        + ": the takeover split was live. A split is one more route per version in the model's scope, "
        "matched by `runtime_fraction` (decision 0004), so the request path is the plain model's: the "
        "same scope lookup, path rewrite (REST) or Lua body rewrite (gRPC)."
    )


def _tabulate_mirror(
    section: Section,
    opened: dict[tuple[str, str], list[OpenRun]],
    rates: dict[str, float],
    primary_served: float,
    shadow_served: float,
) -> None:
    pairs = (("static", "static-mirror"), ("plain", "mirror"))
    labels = {
        "static": "static Envoy",
        "static-mirror": "static Envoy + direct mirror (floor)",
        "plain": "meshserve, plain model",
        "mirror": "meshserve, 100 % mirror (loop-back)",
    }
    cost = Table(
        [
            "protocol",
            "mirror",
            "primary p50 added",
            "primary p99 added",
            "Envoy CPU per mirrored request",
            "MLServer CPU per mirrored request",
            "machine CPU added",
        ],
        caption="**(c) What one mirrored request costs** (with mirror - without, same rounds, medians)",
    )
    for proto in PROTOS:
        table = Table(
            [
                "target",
                f"open loop @ {rates[proto]:.0f} req/s: p50",
                "p99 (runs)",
                "p99 vs without mirror",
                "Envoy CPU / primary req",
                "MLServer CPU / primary req",
                "machine busy (cores)",
                "errors",
            ],
            caption=f"**(c) {proto}: a 100 % mirror**",
        )
        for base, with_mirror in pairs:
            base_p99 = median([r.result.p99_ms for r in opened[(proto, base)]])
            for key in (base, with_mirror):
                runs = opened[(proto, key)]
                p99 = median([r.result.p99_ms for r in runs])
                table.rows.append(
                    [
                        labels[key],
                        f"{median([r.result.p50_ms for r in runs]):.3f} ms",
                        f"{p99:.3f} ms ({', '.join(f'{r.result.p99_ms:.2f}' for r in runs)})",
                        f"{p99 / base_p99:.3f}",
                        f"{median([r.envoy_cpu_us for r in runs]):.0f} µs",
                        f"{median([r.mlserver_cpu_us for r in runs]):.0f} µs",
                        f"{median([r.machine_cores for r in runs]):.2f}",
                        str(sum(r.result.errors for r in runs)),
                    ]
                )
            b, m = opened[(proto, base)], opened[(proto, with_mirror)]
            cost.rows.append(
                [
                    proto,
                    labels[with_mirror],
                    f"{_d(m, b, lambda r: r.result.p50_ms):+.3f} ms",
                    f"{_d(m, b, lambda r: r.result.p99_ms):+.3f} ms",
                    f"{_d(m, b, lambda r: r.envoy_cpu_us):+.0f} µs",
                    f"{_d(m, b, lambda r: r.mlserver_cpu_us):+.0f} µs",
                    f"{_d(m, b, lambda r: r.machine_cores):+.2f} cores",
                ]
            )
        section.tables.append(table)
        plain_p99 = median([r.result.p99_ms for r in opened[(proto, "plain")]])
        mirror_p99 = median([r.result.p99_ms for r in opened[(proto, "mirror")]])
        mlserver_added = _d(opened[(proto, "mirror")], opened[(proto, "plain")], lambda r: r.mlserver_cpu_us)
        section.goals.append(
            _goal(
                f"(c) {proto}: a 100 % mirror adds ≤ 5 % to the primary's p99",
                f"{mirror_p99:.3f} vs {plain_p99:.3f} ms without = {mirror_p99 / plain_p99:.3f} "
                f"({mlserver_added:+.0f} µs MLServer CPU per mirrored request)",
                mirror_p99 <= 1.05 * plain_p99,
                [[r.result.p99_ms for r in opened[(proto, k)]] for k in ("plain", "mirror")],
                P99_SPREAD,
            )
        )
    section.tables.append(cost)
    section.notes += [
        f"*Inconclusive*: a goal's verdict is withheld when the runs it compares disagree among "
        f"themselves (one target's max / min over its runs) by more than x{THROUGHPUT_SPREAD:g} for "
        f"throughput and p50 or x{P99_SPREAD:g} for p99: that noise is larger than the 3 % / 0.2 ms / 5 % "
        "the goals bound. The figures are still shown, with what the verdict would have been.",
        f"(c) The mirror at work, on MLServer's own metrics over the load runs: `{PRIMARY}_1` (the primary) "
        f"served {primary_served:,.0f} inferences and `{SHADOW}_1` (its mirror) {shadow_served:,.0f}.",
        "(c) *Envoy CPU per mirrored request*: the change in Envoy's CPU per primary request when every "
        "request is mirrored; for meshserve that is the copy, the loop-back connection and the second "
        "pass through the listener (scope lookup, and for gRPC the Lua body rewrite to the mirror's "
        "versioned name); for the static floor only the copy. *MLServer CPU*: both MLServers' CPU per "
        "primary request, so with a mirror it includes the mirror model's own inference: most of a "
        "mirror's cost, and the part no Envoy configuration can remove. The mirror model has its own "
        "MLServer process (its requests do not queue behind the primary's), but this machine has two "
        "cores, so its inference still competes with the primary's for CPU. "
        "*Machine busy*: all cores of the machine, from `/proc/stat` (other "
        "engineers' work included).",
        "(c) The floor's copy goes straight to the primary MLServer's `iris_1` again (a static route "
        "cannot rewrite the mirrored path to another model); meshserve's goes to another model, "
        "`shadow_1` (same artifact), on the shadow server's MLServer.",
    ]


def _goal(text: str, measured: str, met: bool, runs: list[list[float]], limit: float) -> Goal:
    """A goal whose verdict is withheld when the runs it compares disagree among themselves by more
    than ``limit`` (max / min of one target's runs): on a busy machine that noise is larger than the
    effect the goal bounds, and a met / not met from it would be a coin toss."""
    spread = max(max(values) / min(values) for values in runs if values and min(values) > 0)
    if spread <= limit:
        return Goal(text, measured, met)
    would = "met" if met else "not met"
    return Goal(
        text,
        f"{measured}; runs spread x{spread:.2f}",
        None,
        verdict_text=f"**inconclusive** (noisy runs; would be {would})",
    )


def _d(a: list[OpenRun], b: list[OpenRun], value: Callable[[OpenRun], float]) -> float:
    return median([value(r) for r in a]) - median([value(r) for r in b])


def _tabulate_generator(section: Section, generator: dict[str, Result], settings: Settings) -> None:
    gen = Table(
        ["generator", "req/s against Envoy direct_response", "generator CPU / s of run", "p50"],
        caption="**Generator ceiling**: the same generators and connection count against an Envoy that "
        "answers every request itself, far above every figure above.",
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
