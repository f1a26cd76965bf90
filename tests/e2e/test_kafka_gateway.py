"""Issue 11 items 1 and 5: the local stack with Kafka (the real Tansu broker) and the model gateway.

A request produced to ``seldon.default.model.<m>.inputs`` (REST JSON or a protobuf
ModelInferRequest) goes through the real Envoy to the real MLServer, and the answer lands on
``….outputs`` with the same key and headers; failures land on ``seldon.default.errors.errors``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apis.kafka_flags import load_file
from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from stack.components import kafka_components
from stack.ports import free_ports
from stack.probes import http_ok
from tests.e2e.conftest import (
    IRIS_IN,
    Stack,
    eventually,
    iris_model,
    kill_supervised,
    running_stack,
    stack_config,
)
from tests.e2e.kafka_io import KafkaIO
from tests.kafka_broker import TansuBroker

INPUTS = "seldon.default.model.iris.inputs"
OUTPUTS = "seldon.default.model.iris.outputs"
ERRORS = "seldon.default.errors.errors"


@pytest.fixture(scope="module")
async def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("kafka") / "home", kafka=True)
    async with running_stack(config) as stack:
        await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=iris_model("iris")))
        await stack.wait_state("iris", "ModelAvailable")
        yield stack


def kafka_of(stack: Stack) -> KafkaIO:
    return KafkaIO(f"127.0.0.1:{stack.config.kafka_port}")


def iris_proto() -> bytes:
    request = pb.ModelInferRequest()
    tensor = request.inputs.add(name="predict", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1, 2, 3, 4])
    return request.SerializeToString()


async def test_loading_a_model_creates_its_topics(kafka_stack: Stack) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS, OUTPUTS, ERRORS)


async def test_a_rest_json_request_is_answered_on_outputs_with_its_key_and_headers(
    kafka_stack: Stack,
) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS)
    await kafka.produce(INPUTS, json.dumps(IRIS_IN).encode(), key=b"json-1", headers=[("x-foo", b"bar")])
    answer = await kafka.read(OUTPUTS, b"json-1")
    body = json.loads(answer.value)
    assert body["model_name"] == "iris_1"
    assert body["outputs"][0]["name"] == "predict"
    assert answer.headers["x-foo"] == b"bar"
    assert answer.headers["x-request-id"] == b"json-1"
    assert answer.headers["x-seldon-route"] == b":iris_1:"
    assert answer.headers["seldon-infer-type"] == b"json/inferModelResponse"


async def test_a_protobuf_request_is_answered_over_grpc_with_a_protobuf_response(kafka_stack: Stack) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS)
    headers = [("x-request-id", b"req-7"), ("x-seldon-route", b":earlier_1:")]
    await kafka.produce(INPUTS, iris_proto(), key=b"proto-1", headers=headers)
    answer = await kafka.read(OUTPUTS, b"proto-1")
    response = pb.ModelInferResponse.FromString(answer.value)
    assert response.model_name == "iris_1"
    assert [o.name for o in response.outputs] == ["predict"]
    assert answer.headers["x-request-id"] == b"req-7"  # the caller's id, not the key
    assert answer.headers["x-seldon-route"] == b":earlier_1: :iris_1:"  # the route grows
    assert answer.headers["seldon-infer-type"] == b"proto/InferModelResponse"


async def test_malformed_payloads_go_to_the_errors_topic_and_the_gateway_keeps_serving(
    kafka_stack: Stack,
) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS, ERRORS)
    await kafka.produce(INPUTS, b"\xff\x00not a request", key=b"bad-1", headers=[("x-trace", b"t1")])
    await kafka.produce(INPUTS, b"", key=b"bad-2")
    await kafka.produce(
        INPUTS, b"{}", key=b"bad-3", headers=[("seldon-infer-type", b"json/inferModelRequest")]
    )
    await kafka.produce(INPUTS, json.dumps(IRIS_IN).encode(), key=b"after-bad")
    for key, said in ((b"bad-1", b"neither"), (b"bad-2", b"no value"), (b"bad-3", b"'inputs'")):
        error = await kafka.read(ERRORS, key)
        assert error.headers["seldon-pipeline-errors"] == b"iris"
        assert said in error.value, error.value
    first = await kafka.read(ERRORS, b"bad-1")
    assert first.headers["x-trace"] == b"t1"
    assert first.headers["x-request-id"] == b"bad-1"
    assert json.loads((await kafka.read(OUTPUTS, b"after-bad")).value)["outputs"]
    assert await kafka.absent(OUTPUTS, b"bad-1", wait=1)


async def test_a_request_the_model_refuses_lands_on_the_errors_topic_naming_the_model(
    kafka_stack: Stack,
) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS)
    wrong = {"inputs": [{"name": "predict", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]}
    await kafka.produce(INPUTS, json.dumps(wrong).encode(), key=b"refused-1")
    error = await kafka.read(ERRORS, b"refused-1")
    assert error.headers["seldon-pipeline-errors"] == b"iris"
    assert error.value.startswith(b"model iris: HTTP "), error.value


async def test_a_model_that_failed_to_load_gets_its_requests_on_the_errors_topic(kafka_stack: Stack) -> None:
    model = iris_model("broken")
    model.modelSpec.uri = "file:///nonexistent/broken-model"
    await kafka_stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model))
    kafka = kafka_of(kafka_stack)
    inputs = "seldon.default.model.broken.inputs"
    await kafka.wait_topics(inputs, "seldon.default.model.broken.outputs")
    await kafka.produce(inputs, iris_proto(), key=b"broken-1")
    error = await kafka.read(ERRORS, b"broken-1")
    assert error.headers["seldon-pipeline-errors"] == b"broken"
    assert error.value.startswith(b"model broken: gRPC "), error.value
    # Deleting a model keeps its topics (cleanTopicsOnDelete defaults to false).
    await kafka_stack.scheduler.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name="broken"))
    )
    await kafka_stack.wait_gone("broken")
    await asyncio.sleep(3)  # more than one topic check of the gateway
    assert inputs in await kafka.topics()


async def test_clean_topics_on_delete_removes_a_models_topics(kafka_stack: Stack) -> None:
    model = iris_model("iris-clean")
    model.dataflowSpec.cleanTopicsOnDelete = True
    await kafka_stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model))
    kafka = kafka_of(kafka_stack)
    topics = ("seldon.default.model.iris-clean.inputs", "seldon.default.model.iris-clean.outputs")
    await kafka.wait_topics(*topics)
    await kafka_stack.scheduler.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name="iris-clean"))
    )

    async def removed() -> bool:
        return not set(topics) & await kafka.topics()

    await eventually(removed, timeout=60, what="iris-clean's topics deleted")


async def test_a_restarted_broker_gets_its_topics_back_and_requests_are_served_within_30_s(
    kafka_stack: Stack,
) -> None:
    kafka = kafka_of(kafka_stack)
    await kafka.wait_topics(INPUTS)
    started, _ = await kill_supervised(kafka_stack, "kafka")
    await kafka.wait_topics(INPUTS, OUTPUTS, ERRORS, timeout=30)
    await kafka.produce(INPUTS, iris_proto(), key=b"after-restart")
    answer = await kafka.read(OUTPUTS, b"after-restart", timeout=60)
    assert pb.ModelInferResponse.FromString(answer.value).outputs
    assert time.monotonic() - started < 30 + 30  # topics back within 30 s; the answer after a group re-join


async def test_a_gateway_pointed_at_another_broker_with_kafka_bootstrap_works_the_same(
    kafka_stack: Stack, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    (health,) = free_ports(1)
    config = kafka_stack.config
    log = (tmp_path / "gateway.log").open("wb")
    gateway = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipelines.modelgateway",
        f"--kafka-bootstrap={kafka_broker.bootstrap}",
        f"--scheduler-port={config.scheduler_port}",
        f"--envoy-port={config.http_port}",
        f"--health-port={health}",
        "--kafka-namespace=other",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await eventually(
            lambda: http_ok(f"http://127.0.0.1:{health}/ready"), timeout=60, what="gateway ready"
        )
        kafka = KafkaIO(kafka_broker.bootstrap)
        inputs, outputs = "seldon.other.model.iris.inputs", "seldon.other.model.iris.outputs"
        await kafka.wait_topics(inputs, outputs, "seldon.other.errors.errors")
        await kafka.produce(inputs, json.dumps(IRIS_IN).encode(), key=b"elsewhere")
        answer = await kafka.read(outputs, b"elsewhere")
        assert json.loads(answer.value)["model_name"] == "iris_1"
    finally:
        gateway.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.wait(), 30) == 0
        log.close()


def test_the_stack_runs_no_broker_when_a_cluster_is_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    embedded = stack_config(home, kafka=True)
    assert [c.name for c in kafka_components(embedded)] == ["kafka", "modelgateway", "engine"]
    assert load_file(embedded.kafka_file)["bootstrap.servers"] == f"127.0.0.1:{embedded.kafka_port}"
    named = stack_config(home, kafka=True, kafka_bootstrap="broker-1:9093", kafka_partitions=4)
    assert [c.name for c in kafka_components(named)] == ["modelgateway", "engine"]
    written = load_file(named.kafka_file)
    assert written["bootstrap.servers"] == "broker-1:9093" and written["topics"]["numPartitions"] == 4
    (tmp_path / "cluster.json").write_text(json.dumps({"bootstrap.servers": "broker-2:9093"}))
    from_file = stack_config(home, kafka=True, kafka_config=str(tmp_path / "cluster.json"))
    assert not from_file.kafka_embedded
    assert kafka_components(stack_config(home)) == []  # Kafka off


def test_up_refuses_a_bad_kafka_setting_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "up", "--home", str(home), "--kafka-security-protocol=SASL_SSL"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "needs sasl.mechanism" in result.stderr
    assert not (home / "stack.json").exists()
