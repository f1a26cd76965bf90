"""Figure 2 - time to route: LoadModel returning → the first 200 through Envoy.

A real stack (scheduler, Envoy, MLServer, agent). For each of N fresh model names: call LoadModel,
then send the REST inference through Envoy every ~2 ms until it answers 200. Meanwhile a
SubscribeModelStatus stream timestamps (on arrival here) when the replica turns Loading, Loaded and
Available. The model server's own share is the agent's load time (artifact copy + MLServer load,
from the agent's ``model loaded duration_s`` log line, the one figure taken inside a process);
the control plane's share is the rest of the externally measured total.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from bench import payloads
from bench.loadgen import median, percentile
from bench.mesh import Mesh, bench_config, start_mesh
from bench.procs import processes
from bench.report import Goal, Section, Table
from samples import train

ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState
POLL_INTERVAL_S = 0.002


@dataclass
class Sample:
    name: str
    rpc_ms: float = 0.0  # LoadModel call itself
    total_ms: float = 0.0  # LoadModel returned → first 200
    polls: int = 0
    last_request_ms: float = 0.0  # the successful request's own round trip (inference included)
    first_ok_sent_ms: float = 0.0  # LoadModel returned → the first successful request was sent
    seen: dict[str, float] = field(default_factory=dict)  # replica state → first arrival (monotonic)
    agent_load_ms: float = 0.0
    returned_at: float = 0.0


async def run(work: Path, quick: bool = False) -> Section:
    count = 4 if quick else 10
    started = time.monotonic()
    train.ensure_artifacts()
    section = Section(
        key="route",
        title="2. Time to route",
        intro=(
            f"{count} models (fresh names, the iris artifact) loaded one at a time into a running stack; "
            "each is unloaded before the next. *Total*: from LoadModel returning to the first HTTP 200 "
            f"through Envoy (REST polled every {POLL_INTERVAL_S * 1000:g} ms). *Model server*: the "
            "agent's load (artifact copy + MLServer loading `<model>_1`), from its log. *Control "
            "plane*: total - model server (scheduling, the LOAD message, the LOADED event, building "
            "and pushing clusters + scope over xDS, Envoy applying them). Reference: Seldon Core 2 "
            "batches route updates in a 250 ms window before it even builds them."
        ),
        command="python -m bench --only route",
    )
    samples: list[Sample] = []
    with processes(work / "logs") as group:
        mesh = await start_mesh(
            group, bench_config(work / "mesh"), ("scheduler", "envoy", "mlserver", "agent")
        )
        async with (
            grpc.aio.insecure_channel(mesh.scheduler_address) as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            watcher = _Watcher(stub)
            watch_task = asyncio.create_task(watcher.run())
            try:
                await asyncio.sleep(0.5)
                await _one(mesh, stub, session, watcher, "warmup")  # first load imports sklearn
                for i in range(count):
                    samples.append(await _one(mesh, stub, session, watcher, f"route-{i}"))
            finally:
                watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch_task
        agent_log = mesh.procs["agent"].log.read_text()
    loads = agent_load_ms(agent_log)
    for sample in samples:
        sample.agent_load_ms = loads.get(sample.name, float("nan"))
    _tabulate(section, samples)
    section.seconds = time.monotonic() - started
    return section


# The agent's logfmt line, e.g. ``... event="model loaded" model=iris version=1 duration_s=0.012``;
# keys are read one by one (bound keys such as server= may come first), values may be quoted.
_AGENT_LOADED = re.compile(r'\bevent="?model loaded"?(?=\s|$)')
_MODEL = re.compile(r'\smodel=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_DURATION = re.compile(r"\sduration_s=\"?([0-9.]+)")


def agent_load_ms(log: str) -> dict[str, float]:
    """Model name -> the agent's load time (ms) from its ``model loaded`` log lines."""
    loads: dict[str, float] = {}
    for line in log.splitlines():
        if not _AGENT_LOADED.search(line):
            continue
        model, duration = _MODEL.search(line), _DURATION.search(line)
        if model is not None and duration is not None:
            loads[model.group(1) or model.group(2)] = float(duration.group(1)) * 1000
    return loads


class _Watcher:
    """SubscribeModelStatus: first arrival time of each replica state per model."""

    def __init__(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
        self._stub = stub
        self.seen: dict[str, dict[str, float]] = {}

    async def run(self) -> None:
        request = scheduler_pb2.ModelSubscriptionRequest(subscriberName="bench")
        async for status in self._stub.SubscribeModelStatus(request):
            now = time.monotonic()
            states = self.seen.setdefault(status.modelName, {})
            for version in status.versions:
                for replica in version.modelReplicaState.values():
                    states.setdefault(ReplicaState.Name(replica.state), now)


async def _one(
    mesh: Mesh,
    stub: scheduler_pb2_grpc.SchedulerAsyncStub,
    session: aiohttp.ClientSession,
    watcher: _Watcher,
    name: str,
) -> Sample:
    sample = Sample(name)
    url = f"{mesh.url}/v2/models/{name}/infer"
    headers = {"seldon-model": name, "content-type": "application/json"}
    before = time.monotonic()
    await stub.LoadModel(scheduler_pb2.LoadModelRequest(model=payloads.model(name)), timeout=10)
    sample.returned_at = time.monotonic()
    sample.rpc_ms = (sample.returned_at - before) * 1000
    deadline = sample.returned_at + 60
    while True:
        sample.polls += 1
        sent = time.monotonic()
        async with session.post(url, data=payloads.IRIS_REST, headers=headers) as response:
            await response.read()
            if response.status == 200:
                sample.last_request_ms = (time.monotonic() - sent) * 1000
                sample.first_ok_sent_ms = (sent - sample.returned_at) * 1000
                break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never answered 200 through Envoy")
        await asyncio.sleep(POLL_INTERVAL_S)
    sample.total_ms = (time.monotonic() - sample.returned_at) * 1000
    for _ in range(200):  # let the ACK land so the watcher sees Available
        if "Available" in watcher.seen.get(name, {}):
            break
        await asyncio.sleep(0.01)
    sample.seen = dict(watcher.seen.get(name, {}))
    await stub.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=name)), timeout=10
    )
    return sample


def _rel(sample: Sample, state: str) -> float:
    at = sample.seen.get(state)
    return (at - sample.returned_at) * 1000 if at is not None else float("nan")


def _tabulate(section: Section, samples: list[Sample]) -> None:
    table = Table(
        [
            "model",
            "LoadModel RPC",
            "total → first 200",
            "model server (agent load)",
            "control plane",
            "status: Loaded at",
            "status: Available at",
            "the 200 request itself",
            "that request sent at",
            "polls",
        ],
        caption="Per model (times after LoadModel returned; status times as seen on SubscribeModelStatus)",
    )
    for s in samples:
        table.rows.append(
            [
                s.name,
                f"{s.rpc_ms:.1f} ms",
                f"{s.total_ms:.1f} ms",
                f"{s.agent_load_ms:.0f} ms",
                f"{s.total_ms - s.agent_load_ms:.1f} ms",
                f"{_rel(s, 'Loaded'):.1f} ms",
                f"{_rel(s, 'Available'):.1f} ms",
                f"{s.last_request_ms:.1f} ms",
                f"{s.first_ok_sent_ms:.1f} ms",
                str(s.polls),
            ]
        )
    control = [s.total_ms - s.agent_load_ms for s in samples]
    totals = [s.total_ms for s in samples]
    agent = [s.agent_load_ms for s in samples]
    after_loaded = [s.total_ms - _rel(s, "Loaded") for s in samples]
    summary = Table(
        ["", "p50", "max"],
        [
            ["total (LoadModel returned → first 200)", f"{median(totals):.1f} ms", f"{max(totals):.1f} ms"],
            ["model server (agent: copy + MLServer load)", f"{median(agent):.1f} ms", f"{max(agent):.1f} ms"],
            [
                "**control plane** (total - model server)",
                f"{median(control):.1f} ms",
                f"{max(control):.1f} ms",
            ],
            [
                "of which: LOADED seen on the status stream → first 200",
                f"{median(after_loaded):.1f} ms",
                f"{max(after_loaded):.1f} ms",
            ],
            [
                "control plane counted from LoadModel *sent* (RPC + total - model server)",
                f"{median([c + s.rpc_ms for c, s in zip(control, samples, strict=True)]):.1f} ms",
                f"{max(c + s.rpc_ms for c, s in zip(control, samples, strict=True)):.1f} ms",
            ],
            [
                "route in place by (the first 200 was sent) - model server",
                f"{median([s.first_ok_sent_ms - s.agent_load_ms for s in samples]):.1f} ms",
                f"{max(s.first_ok_sent_ms - s.agent_load_ms for s in samples):.1f} ms",
            ],
            ["reference (Seldon Core 2): route batching window alone", "250 ms", ""],
        ],
        caption=f"Summary over {len(samples)} models",
    )
    section.tables += [summary, table]
    cp50 = median(control)
    from_sent = median([c + s.rpc_ms for c, s in zip(control, samples, strict=True)])
    section.goals.append(
        Goal(
            "control-plane share ≤ 50 ms p50",
            f"{cp50:.1f} ms p50 (p90 {percentile(control, 90):.1f} ms); total {median(totals):.0f} ms, "
            f"model server {median(agent):.0f} ms; {from_sent:.1f} ms counted from LoadModel sent",
            cp50 <= 50,
        )
    )
    section.notes.append(_run_note())
    section.notes += [
        "*Total* ends when the first 200 is received, so it includes that request's own round trip "
        "(an iris inference through Envoy and MLServer, column *the 200 request itself*) and up to one "
        "poll interval: both are counted against the control plane, which overstates its share. The "
        "row *route in place by* ends instead when the first successful request was *sent* (the route "
        "was in place by then; the poll before it failed), without that request's own round trip.",
        "The control-plane share also includes the agent's gRPC hops (LOAD_MODEL in, LOADED out) and "
        "Envoy's own time to apply the update: everything that is not the model server loading.",
        "LoadModel answers once its change is fsynced (group commit on a writer thread), but the LOAD "
        "goes to the agent as soon as the model is placed, so the agent may start before LoadModel "
        "returns: counted from the return, the control plane leaves out what overlapped the commit. "
        "The row *counted from LoadModel sent* includes the whole call.",
        "A warm-up model (not shown) is loaded first, so the first sample does not pay for "
        "importing sklearn.",
    ]


def _run_note() -> str:
    """When this section's figures were taken: ``--merge`` replaces sections run at other times."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"This section was run at {now}, load average (1/5/15 min) {load} on this shared machine; "
        "figures within one section come from one run."
    )
