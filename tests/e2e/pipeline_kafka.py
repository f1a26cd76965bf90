"""Shared by the Kafka robustness tests: a stack serving two pipelines, and probes of every Kafka path.

The probes show that a pipeline is served *through Kafka*, not only synchronously (the engine answers
a synchronous request itself and writes its messages afterwards, decision 0020):

- audit: a synchronous request's messages are on every topic of its pipeline (the pipeline's inputs
  and outputs, each step's model inputs and outputs), read with ``pipeline inspect``'s reader;
- async: a ``seldon-async`` request is acknowledged (202) and its output lands on the pipeline's
  output topic, with the values its own input gives (the engine's feed consumed it);
- model gateway: a request produced to a model's input topic is answered on its output topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from apis.kafka import KafkaConfig
from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from cli.errors import CliError
from cli.topic_reader import Message, read_newest
from stack.config import StackConfig
from tests.e2e.conftest import Stack, running_stack
from tests.e2e.test_pipeline_engine import CHAIN_MAP, model, pipeline, step, wait_ready

BASE = list(range(1, 17))
ONE_STEP = "tfsimple"  # tfsimple1: (k + BASE, k - BASE)
CHAIN = "tfsimples"  # tfsimple1 then tfsimple2: (2k, 2 * BASE)
STEPS = {ONE_STEP: ["tfsimple1"], CHAIN: ["tfsimple1", "tfsimple2"]}
READ_WINDOW = 2_000  # newest messages per topic a probe check reads (traffic writes there too)
CALL_TIMEOUT_S = 5.0


def expected(pipeline_name: str, k: int) -> list[list[int]]:
    if pipeline_name == CHAIN:
        return [[2 * k] * 16, [2 * v for v in BASE]]
    return [[k + v for v in BASE], [k - v for v in BASE]]


def request_body(k: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [k] * 16},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": BASE},
        ]
    }


def request_proto(k: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    for name, values in (("INPUT0", [k] * 16), ("INPUT1", BASE)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(values)
    return request


@contextlib.asynccontextmanager
async def pipelines_stack(config: StackConfig) -> AsyncIterator[Stack]:
    """The stack with tfsimple1/tfsimple2 loaded and both pipelines Ready (restored ones included)."""
    async with running_stack(config) as stack:
        for name in ("tfsimple1", "tfsimple2"):
            if await stack.model_status(name) is None:
                await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model(name, "addsub")))
        specs = (
            pipeline(ONE_STEP, [step("tfsimple1")], ["tfsimple1"]),
            pipeline(CHAIN, [step("tfsimple1"), step("tfsimple2", ("tfsimple1",), CHAIN_MAP)], ["tfsimple2"]),
        )
        for spec in specs:
            if not await pipeline_known(stack, spec.name):
                await stack.scheduler.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=spec))
        for name in ("tfsimple1", "tfsimple2"):
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        for spec in specs:
            await wait_ready(stack, spec.name)
        yield stack


async def pipeline_known(stack: Stack, name: str) -> bool:
    request = scheduler_pb2.PipelineStatusRequest(subscriberName="tests", name=name)
    with contextlib.suppress(Exception):
        async for _ in stack.scheduler.PipelineStatus(request, timeout=5):
            return True
    return False


def pipeline_topics(kafka: KafkaConfig, name: str) -> list[str]:
    topics = kafka.topics
    per_step = [t for s in STEPS[name] for t in (topics.model_inputs(s), topics.model_outputs(s))]
    return [topics.pipeline_inputs(name), *per_step, topics.pipeline_outputs(name)]


async def newest(kafka: KafkaConfig, topics: list[str], key: bytes | None = None) -> dict[str, list[Message]]:
    """``pipeline inspect``'s read; empty when Kafka cannot be read right now."""
    try:
        return await read_newest(
            kafka, topics, window=100 if key else READ_WINDOW, key=key, deadline_s=CALL_TIMEOUT_S
        )
    except CliError:
        return {topic: [] for topic in topics}


def outputs_of(message: Message) -> list[list[int]]:
    response = pb.ModelInferResponse.FromString(message.value or b"")
    return [list(t.contents.int_contents) for t in response.outputs]


async def post(stack: Stack, name: str, k: int, request_id: str, **headers: str) -> tuple[int, Any]:
    url = f"{stack.url}/v2/pipelines/{name}/infer"
    sent = {"x-request-id": request_id, **headers}
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with stack.http.post(url, json=request_body(k), headers=sent, timeout=timeout) as response:
        text = await response.text()
    try:
        return response.status, json.loads(text)
    except ValueError:  # not the gateway's JSON: kept as it is, so a test shows what came
        return response.status, text


async def produce(kafka: KafkaConfig, topic: str, value: bytes, key: bytes) -> bool:
    """Written and acknowledged within the call timeout (False when Kafka would not take it)."""
    producer = AIOKafkaProducer(bootstrap_servers=list(kafka.bootstrap_servers), request_timeout_ms=3_000)
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            await producer.start()
            await producer.send_and_wait(topic, value, key=key)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await producer.stop()


@dataclass
class Probes:
    """Sends one probe of each Kafka path per round and tells which paths have come through.

    A path counts as working once a probe sent in some round came through completely and with the
    values its own input gives; probes of earlier rounds (e.g. sent while the broker was down) that
    come through later count too, since they were sent after ``since``."""

    stack: Stack
    kafka: KafkaConfig
    tag: str
    rounds: int = 0
    audit: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # pipeline -> (id, k)
    asynchronous: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    gateway: list[str] = field(default_factory=list)
    working: set[str] = field(default_factory=set)  # "audit:<p>", "async:<p>", "modelgateway"
    refusals: list[str] = field(default_factory=list)  # what a refused probe was answered
    seen: dict[str, float] = field(default_factory=dict)  # path -> when first seen working (monotonic)

    @property
    def paths(self) -> set[str]:
        return {f"{kind}:{p}" for kind in ("audit", "async") for p in STEPS} | {"modelgateway"}

    def all_working(self) -> bool:
        return self.working >= self.paths

    async def round(self) -> None:
        self.rounds += 1
        n = self.rounds
        for name in STEPS:
            k = 1_000_000 + n
            request_id = f"{self.tag}-sync-{name}-{n}"
            try:
                status, body = await post(self.stack, name, k, request_id)
            except (TimeoutError, OSError, aiohttp.ClientError) as error:
                self.refusals.append(f"sync {name}: {error!r}")
            else:
                if status == 200:
                    assert [o["data"] for o in body["outputs"]] == expected(name, k), (request_id, body)
                    self.audit.setdefault(name, []).append((request_id, k))
                else:
                    self.refusals.append(f"sync {name}: {status} {body}")
            request_id = f"{self.tag}-async-{name}-{n}"
            try:
                status, body = await post(self.stack, name, k, request_id, **{"seldon-async": "true"})
            except (TimeoutError, OSError, aiohttp.ClientError) as error:
                self.refusals.append(f"async {name}: {error!r}")
            else:
                if status == 202:
                    assert body == {"id": request_id}, body
                    self.asynchronous.setdefault(name, []).append((request_id, k))
                else:
                    self.refusals.append(f"async {name}: {status} {body}")
        key = f"{self.tag}-gateway-{n}"
        topic = self.kafka.topics.model_inputs("tfsimple1")
        if await produce(self.kafka, topic, request_proto(n).SerializeToString(), key.encode()):
            self.gateway.append(key)

    async def check(self) -> None:
        """Read the topics once and mark the paths some probe has come through."""
        topics = self.kafka.topics
        wanted = {t for name in STEPS for t in pipeline_topics(self.kafka, name)}
        wanted.add(topics.model_outputs("tfsimple1"))
        found = await newest(self.kafka, sorted(wanted))
        keys = {topic: {m.key: m for m in messages} for topic, messages in found.items()}
        for name in STEPS:
            for request_id, _ in self.audit.get(name, []):
                key = request_id.encode()
                messages = [keys[t].get(key) for t in pipeline_topics(self.kafka, name)]
                if all(m is not None and dict(m.headers).get("pipeline") == name.encode() for m in messages):
                    self.working.add(f"audit:{name}")
            outputs = keys[topics.pipeline_outputs(name)]
            for request_id, k in self.asynchronous.get(name, []):
                message = outputs.get(request_id.encode())
                if message is not None:
                    assert outputs_of(message) == expected(name, k), (request_id, outputs_of(message))
                    self.working.add(f"async:{name}")
        answered = keys[topics.model_outputs("tfsimple1")]
        if any(key.encode() in answered for key in self.gateway):
            self.working.add("modelgateway")
        now = time.monotonic()
        for path in self.working:
            self.seen.setdefault(path, now)

    async def until_working(self, timeout: float, pause: float = 0.5) -> float:
        """Probe until every path works; returns when that was seen (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self.round()
            await self.check()
            if self.all_working():
                return time.monotonic()
            await asyncio.sleep(pause)
        raise AssertionError(
            f"not every Kafka path works within {timeout} s: missing {sorted(self.paths - self.working)}; "
            f"last refusals {self.refusals[-6:]}"
        )
