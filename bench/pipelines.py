"""Figure 9 - pipelines: what a pipeline costs over calling its models one after the other.

One real stack with Kafka (scheduler, Envoy, MLServer, agent, Tansu, model gateway, dataflow
engine) serving two add/sub INT32 models (``tests/e2e/pipeline_models/addsub``), the one-step
pipeline ``p1`` (tfsimple1) and the two-step chain ``p2`` (tfsimple1 → tfsimple2). Side by side, in
interleaved rounds (latency: request by request, so a load swing on the shared machine hits all four
targets alike), over REST through Envoy from one client:

- latency at one connection (p50, p99): the direct model call; ``p1``; the two models called one
  after the other by the client; ``p2``;
- throughput (closed loop, wrk, as figure 1) for the same four at 4 and at 32 connections: a
  pipeline has more hops in flight per request, so it needs more connections than a direct call to
  keep every process busy; each target's throughput is its best level's median, and the ratio
  compares those capacities;
- the Kafka-driven path (decision 0020's other option): a request produced to ``p1``'s input topic,
  timed until its output is read from ``p1``'s output topic; requests in a row, and requests each
  after more than a second without any (the engine's fetches back at their idle wait, decision 0035).

Goal (issue 11): one-step pipeline ≤ 3 ms p50 over the direct call, ≤ 1 ms more per extra step,
throughput ≥ 0.5 x the direct call's.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from bench import loadgen
from bench.mesh import bench_config, start_mesh
from bench.procs import processes
from bench.report import Goal, Section, Table
from pipelines.fetch_pacing import BUSY_HOLD_S
from stack.components import components

CONNECTIONS = (4, 32)
# Past the engine's busy hold, so its fetches wait 500 ms again; random, so each request lands
# anywhere within such a fetch (decision 0035).
IDLE_GAP_S = (BUSY_HOLD_S + 0.5, BUSY_HOLD_S + 1.5)
MODELS = Path(__file__).resolve().parent.parent / "tests" / "e2e" / "pipeline_models"
I = list(range(1, 17))  # noqa: E741 - the reference's name (§13)
BODY = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": I},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": I},
        ]
    }
)
JSON = {"content-type": "application/json"}
CHAIN_MAP = {"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple1.outputs.OUTPUT1": "INPUT1"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _setup(scheduler: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
    for name in ("tfsimple1", "tfsimple2"):
        spec = scheduler_pb2.ModelSpec(
            uri=f"file://{MODELS / 'addsub'}", requirements=["python"], memoryBytes=100_000
        )
        model = scheduler_pb2.Model(
            meta=scheduler_pb2.MetaData(name=name),
            modelSpec=spec,
            deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1),
        )
        await scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model))
    one = scheduler_pb2.Pipeline(
        name="p1",
        steps=[scheduler_pb2.PipelineStep(name="tfsimple1")],
        output=scheduler_pb2.PipelineOutput(steps=["tfsimple1"]),
    )
    two = scheduler_pb2.Pipeline(
        name="p2",
        steps=[
            scheduler_pb2.PipelineStep(name="tfsimple1"),
            scheduler_pb2.PipelineStep(name="tfsimple2", inputs=["tfsimple1"], tensorMap=CHAIN_MAP),
        ],
        output=scheduler_pb2.PipelineOutput(steps=["tfsimple2"]),
    )
    for pipeline in (one, two):
        await scheduler.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=pipeline))


async def _wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 180
    last = ""
    while time.monotonic() < deadline:
        ok = True
        for path in (
            "/v2/models/tfsimple1/infer",
            "/v2/models/tfsimple2/infer",
            "/v2/pipelines/p1/infer",
            "/v2/pipelines/p2/infer",
        ):
            async with http.post(url + path, data=BODY, headers=JSON) as response:
                last = f"{path}: HTTP {response.status} {(await response.read())[:200]!r}"
                ok &= response.status == 200
        if ok:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"models and pipelines did not become ready; last answer {last}")


def _caller(http: aiohttp.ClientSession, url: str, paths: list[str]) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        for path in paths:
            async with http.post(
                url + path, data=BODY, headers={"content-type": "application/json"}
            ) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status}")

    return call


async def _latencies(call: Callable[[], Awaitable[None]], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def _throughput(url: str, paths: list[str], seconds: float, connections: int) -> float:
    """Closed-loop rate of whole calls (a call of ``paths`` = one request to each, in turn)."""
    result = await loadgen.wrk(
        url + paths[0], BODY, JSON, connections=connections, seconds=seconds, paths=paths
    )
    if result.errors:
        raise RuntimeError(f"{paths}: {result.errors} failed requests of {result.requests}")
    return result.rps / len(paths)


async def _kafka_path(bootstrap: str, count: int, gap_s: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """``count`` requests, each a random ``gap_s`` (low, high) after the previous answer. The reader
    fetches with a 10 ms wait, so what is timed beyond a few ms is meshserve's own hop."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    await producer.start()
    await consumer.start()
    try:
        partition = TopicPartition("seldon.default.pipeline.p1.outputs", 0)
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        request = pb.ModelInferRequest()
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(I)
        value = request.SerializeToString()
        out = []
        for index in range(count):
            await asyncio.sleep(random.uniform(*gap_s))
            key = f"bench-{time.time_ns()}-{index}".encode()
            started = time.perf_counter()
            await producer.send_and_wait("seldon.default.pipeline.p1.inputs", value, key=key)
            found = False
            while not found:
                batches = await consumer.getmany(timeout_ms=5_000)
                if not batches:
                    raise RuntimeError("no output from the Kafka path within 5 s")
                found = any(r.key == key for batch in batches.values() for r in batch)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        await producer.stop()
        await consumer.stop()


async def run(work: Path, quick: bool = False) -> Section:
    rounds, count, seconds, kafka_count = (2, 100, 1.0, 30) if quick else (8, 150, 2.0, 150)
    idle_count = 5 if quick else 20
    started = time.monotonic()
    config = bench_config(work / "pipelines", kafka=True, artifact_roots=str(MODELS))
    config.home.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in components(config)]
    latency: dict[str, list[float]] = {k: [] for k in ("direct", "p1", "chain", "p2")}
    rate: dict[tuple[str, int], list[float]] = {(k, c): [] for k in latency for c in CONNECTIONS}
    kafka: list[float] = []
    with processes(work / "logs") as group:
        mesh = await start_mesh(group, config, names)
        import grpc

        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{config.scheduler_port}") as channel,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http,
        ):
            await _setup(scheduler_pb2_grpc.SchedulerStub(channel))
            await _wait_ready(http, mesh.url)
            paths = {
                "direct": ["/v2/models/tfsimple1/infer"],
                "p1": ["/v2/pipelines/p1/infer"],
                "chain": ["/v2/models/tfsimple1/infer", "/v2/models/tfsimple2/infer"],
                "p2": ["/v2/pipelines/p2/infer"],
            }
            calls = {key: _caller(http, mesh.url, path) for key, path in paths.items()}
            for call in calls.values():
                await _latencies(call, 20)  # warm-up
            for _ in range(rounds):
                for _ in range(count):  # request by request: a load swing hits all four alike
                    for key, call in calls.items():
                        latency[key] += await _latencies(call, 1)
                for connections in CONNECTIONS:
                    for key, path in paths.items():
                        rate[(key, connections)].append(
                            await _throughput(mesh.url, path, seconds, connections)
                        )
            bootstrap = f"127.0.0.1:{config.kafka_port}"
            kafka = await _kafka_path(bootstrap, kafka_count)
            kafka_idle = await _kafka_path(bootstrap, idle_count, gap_s=IDLE_GAP_S)
    p50 = {k: median(v) for k, v in latency.items()}
    p99 = {k: _percentile(v, 0.99) for k, v in latency.items()}
    at = {k: median(v) for k, v in rate.items()}
    rps = {k: max(at[(k, c)] for c in CONNECTIONS) for k in latency}
    labels = {
        "direct": "model tfsimple1 through Envoy",
        "p1": "one-step pipeline p1",
        "chain": "tfsimple1 then tfsimple2 (client calls both)",
        "p2": "two-step pipeline p2",
    }
    table = Table(
        ["target", "p50 ms", "p99 ms", *(f"calls/s, {c} connections" for c in CONNECTIONS), "throughput"],
        [
            [
                labels[k],
                f"{p50[k]:.2f}",
                f"{p99[k]:.2f}",
                *(f"{at[(k, c)]:.0f}" for c in CONNECTIONS),
                f"{rps[k]:.0f}",
            ]
            for k in labels
        ],
        caption=f"REST through Envoy, {rounds} rounds of {count} sequential requests to each target, "
        f"interleaved request by request, and {seconds:g} s closed loop (wrk) at each connection count "
        "(medians; throughput: the better of the two).",
    )
    kafka_table = Table(
        ["path", "p50 ms", "p99 ms"],
        [
            [
                "synchronous: engine runs p1, calls the model through Envoy",
                f"{p50['p1']:.2f}",
                f"{p99['p1']:.2f}",
            ],
            [
                "Kafka-driven: produce to p1's inputs topic, read its outputs topic; requests in a row",
                f"{median(kafka):.2f}",
                f"{_percentile(kafka, 0.99):.2f}",
            ],
            [
                "Kafka-driven, each request after a quiet spell (the engine's fetches at their idle wait)",
                f"{median(kafka_idle):.2f}",
                f"{_percentile(kafka_idle, 0.99):.2f}",
            ],
        ],
        caption=f"The two paths of decision 0020: {kafka_count} requests in a row on the Kafka path, "
        f"then {idle_count} each {IDLE_GAP_S[0]:g}-{IDLE_GAP_S[1]:g} s (at random, so they land "
        "anywhere in the engine's idle fetch) after the previous answer.",
    )
    over_one = p50["p1"] - p50["direct"]
    per_step = (p50["p2"] - p50["chain"]) - over_one
    goals = [
        Goal("one-step pipeline ≤ 3 ms p50 over the direct call", f"+{over_one:.2f} ms", over_one <= 3.0),
        Goal("≤ 1 ms more per extra step", f"{per_step:+.2f} ms", per_step <= 1.0),
        Goal(
            "throughput ≥ 0.5 x the direct call's",
            f"{rps['p1'] / rps['direct']:.2f} x ({rps['p1']:.0f} vs {rps['direct']:.0f} calls/s; at 4 "
            f"connections {at[('p1', 4)] / at[('direct', 4)]:.2f} x)",
            rps["p1"] >= 0.5 * rps["direct"],
        ),
    ]
    return Section(
        key="pipelines",
        title="Pipelines: the engine's synchronous path against calling the models",
        intro=__doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
        command="python -m bench --only pipelines --merge",
        tables=[table, kafka_table],
        goals=goals,
        notes=[
            "2-core machine shared with other work: medians and ratios, not absolute numbers, "
            "carry the result.",
            "The extra step cost is (p2 - chain) - (p1 - direct): what the engine adds per step beyond "
            "the model call the client would make anyway.",
            "The chain's calls/s: wrk sends tfsimple1's and tfsimple2's requests in turn, and two "
            "requests count as one call.",
            "The Kafka-driven path waits in fetches: the embedded broker (Tansu) answers a long-poll "
            "fetch when its wait runs out, not when a record arrives, so a hop takes about half of "
            "`fetch.max.wait.ms` (aiokafka's default 500 ms; one hop measured alone: 240 ms p50 at "
            "500 ms, 39 ms at 100 ms, 6 ms at 10 ms). A Kafka cluster answers at once. A short wait "
            "for every consumer costs idle CPU (20 ms: 19.7 -> 250 ms/s, `pipeline-idle`, "
            "2026-12-02), so the engine's and the model gateway's fetches wait 10 ms only while "
            "records flow and the configured wait after an idle second, and the engine's writer "
            "sends a Kafka-fed run's output (the caller's answer) at once instead of after its 50 ms "
            "gathering for audit copies (decision 0035). The first row is a request while traffic "
            "flows (255 ms p50 before that, on 2026-12-02; side by side in "
            "tests/e2e/test_pipeline_engine.py: 250 ms, 56 ms with paced fetches alone, 13 ms with "
            "both), the second the first request after a quiet spell.",
        ],
        seconds=time.monotonic() - started,
    )
