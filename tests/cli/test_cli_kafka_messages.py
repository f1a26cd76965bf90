"""How ``pipeline inspect`` decodes and trims one Kafka value (cli.kafka_messages), and the bounds
of its reads (cli.topic_reader) that need no broker or a silent one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from apis.kafka import InferType, KafkaConfig
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from cli import kafka_messages
from cli.errors import CliError
from cli.topic_reader import MAX_WINDOW, Message, read_newest

CONFIG = KafkaConfig(bootstrap_servers=("127.0.0.1:1",))


def message(value: bytes, *, topic: str = "seldon.default.model.m.inputs", infer_type: str = "") -> Message:
    headers = ((("seldon-infer-type", infer_type.encode()),) if infer_type else ()) + (("x-a", b"1"),)
    return Message(topic, 0, 7, 0, b"k", value, headers)


def proto_request() -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, 2])
    return request.SerializeToString()


def test_values_decode_by_header_then_by_guess() -> None:
    assert kafka_messages.decode(message(b"")) == {}
    as_request = kafka_messages.decode(message(proto_request()))
    assert as_request["inputs"][0]["contents"] == {"int64Contents": ["1", "2"]}  # protojson: int64 as text
    # The header wins over the topic's kind: a request on an outputs topic is still a request.
    header = InferType.PROTO_REQUEST
    on_outputs = message(proto_request(), topic="seldon.default.model.m.outputs", infer_type=header)
    assert kafka_messages.decode(on_outputs) == as_request
    oip = json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1, 2]}]})
    assert kafka_messages.decode(message(oip.encode(), infer_type="no/such-type")) == json.loads(oip)
    assert (
        kafka_messages.decode(message(b"model m: bad request: no inputs"))
        == "model m: bad request: no inputs"
    )
    assert kafka_messages.decode(message(b"\xff\xfe\x00")) == "base64://4A"


def test_tensor_and_truncation() -> None:
    value = {"outputs": [{"name": "a", "data": list(range(25))}, {"name": "b", "data": [1]}]}
    assert kafka_messages.tensor(value, "b") == {"name": "b", "data": [1]}
    assert kafka_messages.tensor(value, "c") is None
    assert kafka_messages.tensor("text", "a") is None
    cut = kafka_messages.truncated({**value, "rawOutputContents": ["A" * 100], "shape": list(range(12))})
    assert cut["outputs"][0]["data"] == [*range(10), "... 15 more"]
    assert cut["outputs"][1]["data"] == [1]
    assert cut["rawOutputContents"] == ["A" * 64 + "... 36 more"]
    assert cut["shape"] == list(range(12))  # a shape is never cut


def test_raw_line_and_json_entry() -> None:
    shown = message(b"")
    assert kafka_messages.raw_line("t", shown, {}, verbose=False) == "t k {}"
    assert kafka_messages.raw_line("t", shown, {}, verbose=True) == "t k {} x-a=[1]"
    assert kafka_messages.json_entry(shown, {}, verbose=True) == {
        "key": "k", "value": {}, "headers": {"x-a": ["1"]}, "partition": 0, "offset": 7,
    }  # fmt: skip


@pytest.mark.parametrize("window", [0, MAX_WINDOW + 1])
async def test_the_window_is_bounded(window: int) -> None:
    with pytest.raises(CliError, match=f"--offset {window} is outside 1..{MAX_WINDOW}"):
        await read_newest(CONFIG, ["t"], window=window, key=None, deadline_s=1)


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """Accepts connections and never answers: only the deadline ends a read."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_silent_broker_ends_at_the_deadline(silent_broker: str) -> None:
    config = KafkaConfig(bootstrap_servers=(silent_broker,))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CliError, match=r"reading 1 topic\(s\) from Kafka at .* took over 1s \(--timeout\)"):
        await read_newest(config, ["t"], window=1, key=None, deadline_s=1)
    assert loop.time() - started < 10
