"""Issue 11 item 3: model gateway replicas split the models' input partitions, and a replica SIGKILLed
under asynchronous Kafka traffic loses no request (real Tansu, Envoy, MLServer, two gateway processes).

The stack runs one model gateway (``--name modelgateway``); the test starts a second
(``modelgateway-b``) itself, so that it alone decides when that one is SIGKILLed. Each model's input
topic has one partition; the ring of the two names (``apis.hash_ring``, as the replicas' assignor
uses it) says which replica reads which model, and each replica's ``/metrics`` must show exactly
its share. Then requests are produced to every model's input topic while ``modelgateway-b`` is
killed: every request must come back on its model's output topic. The gateway is at least once, so
a request ``modelgateway-b`` had read but not committed may be answered twice; duplicates are
counted and reported, losses fail the test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from apis.hash_ring import ring_order
from apis.mlops.scheduler import scheduler_pb2
from stack.components import client_tls_flags
from stack.ports import free_ports
from tests.e2e.conftest import IRIS_IN, Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO

STACK_GATEWAY = "modelgateway"  # the model gateway's default --name, which the stack keeps
JOINING = "modelgateway-b"
WAIT_S = 120.0  # a killed member's partitions move after Kafka's session timeout (10 s) and a rejoin
PER_REPLICA = 2
MAX_REQUESTS = 5_000
_OWNED = re.compile(r'^meshserve_modelgateway_owned_partitions\{model="([^"]+)"\} (\S+)$', re.M)


def inputs(model: str) -> str:
    return f"seldon.default.model.{model}.inputs"


def outputs(model: str) -> str:
    return f"seldon.default.model.{model}.outputs"


def spread_models() -> dict[str, list[str]]:
    """``PER_REPLICA`` model names the ring gives to each replica (one partition per topic)."""
    owned: dict[str, list[str]] = {STACK_GATEWAY: [], JOINING: []}
    for i in range(1_000):
        name = f"spread{i}"
        owner = ring_order(f"{inputs(name)}/0", [STACK_GATEWAY, JOINING])[0]
        if len(owned[owner]) < PER_REPLICA:
            owned[owner].append(name)
        if all(len(names) == PER_REPLICA for names in owned.values()):
            return owned
    raise AssertionError("the ring gave no spread")


@pytest.fixture(scope="module")
async def gstack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("mgw") / "home", kafka=True)
    async with running_stack(config) as stack:
        names = [m for ms in spread_models().values() for m in ms]
        for name in names:
            await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=iris_model(name)))
        for name in names:
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        yield stack


async def start_gateway(stack: Stack, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    config = stack.config
    [health_port] = free_ports(1)
    args = [
        sys.executable,
        "-m",
        "pipelines.modelgateway",
        f"--name={JOINING}",
        f"--scheduler-port={config.scheduler_port}",
        f"--envoy-port={config.http_port}",
        f"--health-port={health_port}",
        f"--kafka-config={config.kafka_file}",
        *client_tls_flags(config.client_tls("controller")),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out, env=env)
    return process, health_port


async def owned(stack: Stack, port: int) -> set[str]:
    """The models whose input partitions the replica on ``port`` reads now (its /metrics)."""
    try:
        async with stack.http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except OSError:
        return set()
    return {model for model, value in _OWNED.findall(text) if float(value) > 0}


async def until(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """When ``check`` first held (within ``WAIT_S``)."""
    await eventually(check, WAIT_S, what)
    return time.monotonic()


class Answers:
    """Counts the keys that reach the models' output topics and the errors topic, from the start."""

    def __init__(self, bootstrap: str, models: list[str]) -> None:
        self._bootstrap = bootstrap
        self._models = models
        self.outputs: collections.Counter[bytes] = collections.Counter()
        self.errors: list[bytes] = []

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            topics = [outputs(m) for m in self._models] + ["seldon.default.errors.errors"]
            partitions = [TopicPartition(t, 0) for t in topics]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    for record in records:
                        if record.key is None:
                            continue
                        if tp.topic.endswith(".errors"):
                            self.errors.append(record.key)
                        elif json.loads(record.value or b"{}").get("outputs"):
                            self.outputs[record.key] += 1
        finally:
            await consumer.stop()


async def test_models_spread_over_two_gateways_and_a_killed_one_loses_no_request(
    gstack: Stack, tmp_path: Path
) -> None:
    share = spread_models()
    models = share[STACK_GATEWAY] + share[JOINING]
    stack_port = gstack.config.modelgateway_port
    bootstrap = f"127.0.0.1:{gstack.config.kafka_port}"
    await KafkaIO(bootstrap).wait_topics(*(outputs(m) for m in models), *(inputs(m) for m in models))
    answers = Answers(bootstrap, models)
    collector = asyncio.create_task(answers.run())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    process, joined_port = await start_gateway(gstack, tmp_path / "modelgateway-b.log")
    sent: list[bytes] = []

    async def send(count: int) -> None:
        for _ in range(count):
            key = f"req-{len(sent)}".encode()
            model = models[len(sent) % len(models)]
            await producer.send(inputs(model), json.dumps(IRIS_IN).encode(), key=key)
            sent.append(key)
            await asyncio.sleep(0.005)
        await producer.flush()

    try:
        # Both replicas read exactly their ring share.
        async def spread() -> bool:
            here, there = await owned(gstack, stack_port), await owned(gstack, joined_port)
            return here == set(share[STACK_GATEWAY]) and there == set(share[JOINING])

        await until(spread, f"the split {share} on both replicas' /metrics")
        await send(200)
        await until(lambda: _answered(answers, sent), "answers to the traffic before the kill")

        # Traffic keeps flowing while modelgateway-b is SIGKILLed mid-stream.
        traffic = asyncio.create_task(send(400))
        await until(_more_sent(sent, 300), "traffic under way")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        killed = time.monotonic()
        await traffic

        async def took_over() -> bool:
            return await owned(gstack, stack_port) == set(models)

        moved = await until(took_over, "the stack's gateway reads every model")
        await until(lambda: _answered(answers, sent), "every request answered after the kill")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await producer.stop()
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    assert len(sent) == 600 <= MAX_REQUESTS
    assert not answers.errors, f"requests on the errors topic: {answers.errors[:5]}"
    missing = [k for k in sent if answers.outputs[k] == 0]
    assert not missing, f"{len(missing)} requests never answered: {missing[:5]}"
    twice = sum(1 for k in sent if answers.outputs[k] > 1)
    print(
        f"{len(sent)} requests, all answered; partitions moved {moved - killed:.1f} s after the kill; "
        f"{twice} answered twice (at least once)"
    )


async def _answered(answers: Answers, sent: list[bytes]) -> bool:
    return all(answers.outputs[k] for k in sent)


def _more_sent(sent: list[bytes], count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(sent) >= count

    return check
