"""``pipeline inspect`` against the real scheduler (in-process SchedulerApp, which knows the
pipeline's steps) and a real Kafka broker (Tansu): the messages of a two-step pipeline, written as
the gateways write them (key = request id, ``pipeline``/``x-request-id``/``traceparent`` headers,
protobuf or OIP JSON values), are found per request id, in both formats (seldon-pipelines.md §7)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer

from apis.kafka import InferType, KafkaConfig
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines import kafka_clients
from scheduler.app import SchedulerApp
from stack.ports import free_ports
from tests.cli.cli_fakes import invoke
from tests.kafka_broker import TansuBroker
from tests.scheduler.test_pipeline_api import config

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "pipelines"
PREFIX = "seldon.default"
STEP_TOPICS = [
    f"{PREFIX}.model.tfsimple1.inputs",
    f"{PREFIX}.model.tfsimple1.outputs",
    f"{PREFIX}.model.tfsimple2.inputs",
    f"{PREFIX}.model.tfsimple2.outputs",
]
TOPICS = [*STEP_TOPICS, f"{PREFIX}.pipeline.tfsimples.inputs", f"{PREFIX}.pipeline.tfsimples.outputs"]
REQUESTS = ("req-a", "req-b")  # req-b is the newer one
I16 = list(range(1, 17))
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    tansu = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SchedulerApp]:
    with structlog.testing.capture_logs():  # the scheduler's logs are not the command's output
        built = SchedulerApp(config(tmp_path_factory.mktemp("state")))
        await built.start()
        try:
            for sample in ("chain.yaml", "tfsimple.yaml"):  # tfsimples (2 steps), tfsimple (no messages)
                assert await invoke(*scheduler(built), "pipeline", "load", "-f", str(SAMPLES / sample)) == 0
            yield built
        finally:
            await built.stop(grace=0)


@pytest.fixture(scope="module")
async def written(broker: TansuBroker) -> None:
    """Two requests through tfsimples, every topic of both written as the gateways would."""
    kafka = KafkaConfig(bootstrap_servers=(broker.bootstrap,), partitions=2)
    admin = kafka_clients.admin(kafka)
    await admin.start()
    try:
        await kafka_clients.ensure_topics(admin, kafka, TOPICS)
    finally:
        await admin.close()
    producer = kafka_clients.producer(kafka)
    await producer.start()
    try:
        stamp = int(time.time() * 1000)
        for number, request_id in enumerate(REQUESTS):
            await _one_request(producer, request_id, first=number + 1, stamp=stamp + 10 * number)
    finally:
        await producer.stop()


async def _one_request(producer: AIOKafkaProducer, request_id: str, *, first: int, stamp: int) -> None:
    data = [first * value for value in I16]
    doubled = [2 * value for value in data]
    zeros = [0] * 16
    route: list[tuple[str, bytes]] = []
    messages: list[tuple[str, bytes, list[tuple[str, bytes]]]] = [
        (f"{PREFIX}.pipeline.tfsimples.inputs", _request(data, data), []),
        (f"{PREFIX}.model.tfsimple1.inputs", _request(data, data), []),
        (f"{PREFIX}.model.tfsimple1.outputs", _response("tfsimple1_1", doubled, zeros), [
            ("x-seldon-route", b":tfsimple1_1:"), ("seldon-infer-type", InferType.PROTO_RESPONSE.encode()),
        ]),
        # The second step is called over REST: OIP JSON values, one with the infer-type header.
        (f"{PREFIX}.model.tfsimple2.inputs", _json_request(doubled, zeros), []),
        (f"{PREFIX}.model.tfsimple2.outputs", _json_response("tfsimple2_1", doubled, doubled), [
            ("x-seldon-route", b":tfsimple1_1: :tfsimple2_1:"),
            ("seldon-infer-type", InferType.JSON_RESPONSE.encode()),
        ]),
        (f"{PREFIX}.pipeline.tfsimples.outputs", _response("", doubled, doubled), route),
    ]  # fmt: skip
    common = [
        ("pipeline", b"tfsimples"),
        ("x-request-id", request_id.encode()),
        ("traceparent", TRACEPARENT),
    ]
    for offset, (topic, value, extra) in enumerate(messages):
        await producer.send_and_wait(
            topic, value, key=request_id.encode(), headers=[*common, *extra], timestamp_ms=stamp + offset
        )


def _request(input0: list[int], input1: list[int]) -> bytes:
    request = pb.ModelInferRequest()
    for name, values in (("INPUT0", input0), ("INPUT1", input1)):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(values)
    return request.SerializeToString()


def _response(model: str, output0: list[int], output1: list[int]) -> bytes:
    response = pb.ModelInferResponse(model_name=model, model_version="1" if model else "")
    for name, values in (("OUTPUT0", output0), ("OUTPUT1", output1)):
        response.outputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(values)
    return response.SerializeToString()


def _json_request(input0: list[int], input1: list[int]) -> bytes:
    inputs = [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "data": values}
        for name, values in (("INPUT0", input0), ("INPUT1", input1))
    ]
    return json.dumps({"inputs": inputs}).encode()


def _json_response(model: str, output0: list[int], output1: list[int]) -> bytes:
    outputs = [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "data": values}
        for name, values in (("OUTPUT0", output0), ("OUTPUT1", output1))
    ]
    return json.dumps({"model_name": model, "outputs": outputs}).encode()


def scheduler(app: SchedulerApp) -> tuple[str, str]:
    return ("--scheduler-host", f"127.0.0.1:{app.config.scheduler_port}")


async def inspect(app: SchedulerApp, broker: TansuBroker, *args: str) -> int:
    kafka = ("--kafka-bootstrap", broker.bootstrap, "--timeout", "30")
    return await invoke(*scheduler(app), "pipeline", "inspect", *kafka, *args)


def lines(out: str) -> list[list[str]]:
    return [line.split(" ", 2) for line in out.splitlines()]


def tensors(value: dict[str, Any]) -> dict[str, list[int]]:
    """name -> values, from protojson (contents.intContents) or OIP JSON (data)."""
    shown = {}
    for tensor in value.get("inputs") or value.get("outputs") or []:
        shown[tensor["name"]] = tensor.get("data") or tensor["contents"]["intContents"]
    return shown


@pytest.mark.usefixtures("written")
async def test_one_request_every_step_raw(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimples", "--request-id", "req-a") == 0
    shown = lines(capsys.readouterr().out)
    assert [
        topic for topic, _, _ in shown
    ] == TOPICS  # steps by name, inputs then outputs, then the pipeline's
    assert {key for _, key, _ in shown} == {"req-a"}
    values = [json.loads(value) for _, _, value in shown]
    doubled = [2 * v for v in I16]
    assert tensors(values[0]) == {"INPUT0": I16, "INPUT1": I16}  # protobuf request, as protojson
    assert values[1]["modelName"] == "tfsimple1_1"
    assert tensors(values[1]) == {"OUTPUT0": doubled, "OUTPUT1": [0] * 16}
    assert tensors(values[2]) == {"INPUT0": doubled, "INPUT1": [0] * 16}  # OIP JSON, as written
    assert tensors(values[3]) == {"OUTPUT0": doubled, "OUTPUT1": doubled}
    assert tensors(values[4]) == {"INPUT0": I16, "INPUT1": I16}
    assert "modelName" not in values[5] and tensors(values[5]) == {"OUTPUT0": doubled, "OUTPUT1": doubled}


@pytest.mark.usefixtures("written")
async def test_one_request_json_and_verbose_headers(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimples", "--request-id", "req-b", "--format", "json", "-v") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [topic["name"] for topic in shown["topics"]] == TOPICS
    for topic in shown["topics"]:
        [message] = topic["msgs"]
        assert message["key"] == "req-b"
        assert message["headers"]["pipeline"] == ["tfsimples"]
        assert message["headers"]["x-request-id"] == ["req-b"]
    first = shown["topics"][0]["msgs"][0]["value"]  # jq .topics[0].msgs[0].value: tfsimple1's input
    assert tensors(first) == {"INPUT0": [2 * v for v in I16], "INPUT1": [2 * v for v in I16]}
    route = shown["topics"][3]["msgs"][0]["headers"]["x-seldon-route"]
    assert route == [":tfsimple1_1: :tfsimple2_1:"]

    assert await inspect(app, broker, "tfsimples", "--request-id", "req-b", "--verbose") == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.endswith(
        f" pipeline=[tfsimples] x-request-id=[req-b] traceparent=[{TRACEPARENT.decode()}]"
    )


@pytest.mark.usefixtures("written")
async def test_default_is_the_newest_message_and_offset_widens(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimples") == 0
    assert {key for _, key, _ in lines(capsys.readouterr().out)} == {"req-b"}
    assert await inspect(app, broker, "tfsimples", "--offset", "2", "--format", "json") == 0
    for topic in json.loads(capsys.readouterr().out)["topics"]:
        assert [message["key"] for message in topic["msgs"]] == ["req-a", "req-b"]  # oldest first


@pytest.mark.usefixtures("written")
async def test_a_step_a_topic_and_a_tensor(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimples.tfsimple2", "--request-id", "req-a") == 0
    assert [topic for topic, _, _ in lines(capsys.readouterr().out)] == STEP_TOPICS[2:]
    assert await inspect(app, broker, "tfsimples.tfsimple1.outputs.OUTPUT1", "--request-id", "req-a") == 0
    [[topic, key, value]] = lines(capsys.readouterr().out)
    assert (topic, key) == (STEP_TOPICS[1], "req-a")
    assert json.loads(value) == {
        "name": "OUTPUT1", "datatype": "INT32", "shape": ["1", "16"], "contents": {"intContents": [0] * 16},
    }  # fmt: skip
    assert await inspect(app, broker, "tfsimples.outputs", "--format", "json") == 0
    [topic] = json.loads(capsys.readouterr().out)["topics"]
    assert topic["name"] == f"{PREFIX}.pipeline.tfsimples.outputs"
    assert [message["key"] for message in topic["msgs"]] == ["req-b"]
    assert await inspect(app, broker, "tfsimples.tfsimple1.inputs.NOSUCH", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out)["topics"][0]["msgs"] is None


@pytest.mark.usefixtures("written")
async def test_truncate_and_table(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimples.tfsimple1.inputs.INPUT0", "-t", "--format", "json") == 0
    value = json.loads(capsys.readouterr().out)["topics"][0]["msgs"][0]["value"]
    assert value["contents"]["intContents"] == [2 * v for v in range(1, 11)] + ["... 6 more"]
    assert value["shape"] == ["1", "16"]
    assert await inspect(app, broker, "tfsimples", "--request-id", "req-a", "--format", "table", "-v") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["topic", "key", "value", "headers"]
    assert sum("req-a" in line for line in out.splitlines()) == len(TOPICS)
    assert "pipeline=[tfsimples]" in out  # rich markup escaped, not swallowed


async def test_nothing_written_yet_is_null(
    app: SchedulerApp, broker: TansuBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await inspect(app, broker, "tfsimple", "--format", "json") == 0
    shown = json.loads(capsys.readouterr().out)["topics"]
    assert [topic["name"] for topic in shown] == [
        f"{PREFIX}.model.tfsimple1.inputs", f"{PREFIX}.model.tfsimple1.outputs",
        f"{PREFIX}.pipeline.tfsimple.inputs", f"{PREFIX}.pipeline.tfsimple.outputs",
    ]  # fmt: skip
    assert {topic["msgs"] is None for topic in shown[2:]} == {True}


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nosuch", "pipeline 'nosuch' not found"),
        ("Bad_Name.x", "pipeline name 'Bad_Name' is invalid"),
        (
            "tfsimples.tfsimple3",
            "pipeline 'tfsimples' has no step 'tfsimple3'; its steps are tfsimple1, tfsimple2",
        ),
        ("tfsimples.tfsimple1.middle", "after the step comes 'inputs' or 'outputs', not 'middle'"),
        ("tfsimples.tfsimple1.inputs." + "x" * 300, "a tensor name is at most 256 characters"),
    ],
)
async def test_bad_references_fail_before_kafka(
    app: SchedulerApp, capsys: pytest.CaptureFixture[str], reference: str, message: str
) -> None:
    (closed,) = free_ports(1)  # nothing listens: the reference is refused before Kafka is tried
    args = ("pipeline", "inspect", reference, "--kafka-bootstrap", f"127.0.0.1:{closed}")
    assert await invoke(*scheduler(app), *args) == 1
    assert message in capsys.readouterr().err


async def test_unreachable_kafka_is_a_clear_error(
    app: SchedulerApp, capsys: pytest.CaptureFixture[str]
) -> None:
    (closed,) = free_ports(1)
    started = time.monotonic()
    args = ("pipeline", "inspect", "tfsimples", "--kafka-bootstrap", f"127.0.0.1:{closed}", "--timeout", "20")
    assert await invoke(*scheduler(app), *args) == 1
    assert time.monotonic() - started < 20
    assert f"Error: cannot read from Kafka at 127.0.0.1:{closed}" in capsys.readouterr().err


async def test_kafka_config_from_the_stack_home(
    app: SchedulerApp,
    broker: TansuBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MESHSERVE_HOME", str(tmp_path))
    assert await invoke(*scheduler(app), "pipeline", "inspect", "tfsimples") == 1
    assert "no Kafka to read: give --kafka-bootstrap or --kafka-config" in capsys.readouterr().err
    (tmp_path / "kafka.json").write_text(
        json.dumps({"bootstrap.servers": broker.bootstrap, "topicPrefix": "other"})
    )
    assert await invoke(*scheduler(app), "pipeline", "inspect", "tfsimples", "--format", "json") == 0
    names = [topic["name"] for topic in json.loads(capsys.readouterr().out)["topics"]]
    assert names[0] == "other.default.model.tfsimple1.inputs"
    (tmp_path / "kafka.json").write_text('{"bootstrap.servers": "127.0.0.1:1", "surprise": 1}')
    assert await invoke(*scheduler(app), "pipeline", "inspect", "tfsimples") == 1
    assert "unknown Kafka config key(s): surprise" in capsys.readouterr().err
