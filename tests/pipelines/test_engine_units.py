"""Unit tests of the engine's pure parts: tensor codec, topic placement, request parsing, error mapping."""

from __future__ import annotations

import struct

import grpc
import pytest
from aiohttp import web

from apis.kafka_topics import Topics
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.engine.codec import (
    message_to_request,
    message_to_response,
    request_to_message,
    response_to_message,
)
from pipelines.engine.errors import BadRequest, failure
from pipelines.engine.feed import BadMessage, decode
from pipelines.engine.gateway import pipeline_name
from pipelines.engine.models import EnvoyModels, Fault, ModelCallFailed
from pipelines.engine.runner import DeadlineExceeded, NotServed, new_request_id
from pipelines.engine.topics import source_of, topic_of
from pipelines.references import Direction, Source
from pipelines.tensors import InvalidTensor, Tensor, message_from_json
from pipelines.topology import RevisitLimitExceeded, StepFailed

TOPICS = Topics("seldon", "default")


def test_typed_and_raw_contents_round_trip() -> None:
    message = (
        Tensor("a", "INT32", (1, 3), [[1, 2, 3]]),
        Tensor("b", "BYTES", (1,), ["hi"], {"content_type": "str"}),
        Tensor("c", "FP64", (2,), [0.5, 1.5]),
    )
    back = request_to_message(message_to_request(message))
    assert [t.data for t in back] == [[1, 2, 3], ["hi"], [0.5, 1.5]]
    assert back[1].parameters == {"content_type": "str"}
    raw = pb.ModelInferRequest(raw_input_contents=[struct.pack("<2i", 7, 8), struct.pack("<I", 2) + b"ok"])
    raw.inputs.add(name="x", datatype="INT32", shape=[2])
    raw.inputs.add(name="y", datatype="BYTES", shape=[1])
    assert [t.data for t in request_to_message(raw)] == [[7, 8], ["ok"]]
    response = response_to_message(message_to_response(message[:1], model="m"))
    assert response[0].data == [1, 2, 3]


def test_malformed_protobuf_tensors_are_refused() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="x", datatype="NOPE", shape=[1])
    with pytest.raises(InvalidTensor, match="datatype"):
        request_to_message(request)
    short = pb.ModelInferRequest(raw_input_contents=[b"\x01\x02\x03"])
    short.inputs.add(name="x", datatype="INT32", shape=[1])
    with pytest.raises(InvalidTensor, match="whole number"):
        request_to_message(short)
    count = pb.ModelInferRequest()
    count.inputs.add(name="x", datatype="INT32", shape=[2]).contents.int_contents.append(1)
    with pytest.raises(InvalidTensor, match="x"):
        request_to_message(count)


def test_sources_map_to_topics_and_back() -> None:
    step = Source("p", "m", Direction.OUTPUTS)
    assert topic_of(TOPICS, step) == "seldon.default.model.m.outputs"
    assert source_of(TOPICS, "seldon.default.model.m.outputs", {"pipeline": b"p"}) == step
    assert source_of(TOPICS, "seldon.default.model.m.outputs", {}) is None  # whose?
    own = Source("p", None, Direction.INPUTS)
    assert source_of(TOPICS, topic_of(TOPICS, own), {}) == own
    assert source_of(TOPICS, "other.default.pipeline.p.inputs", {}) is None
    assert source_of(TOPICS, "seldon.default.pipeline.P!.inputs", {}) is None


def test_pipeline_names_and_errors_map_to_statuses() -> None:
    assert pipeline_name("tfsimple.pipeline") == pipeline_name("tfsimple") == "tfsimple"
    with pytest.raises(BadRequest):
        pipeline_name("../etc")
    refused = StepFailed("p", "m", "pipeline p: step m failed")
    refused.__cause__ = ModelCallFailed("m", Fault.CALLER, "HTTP 400")
    gone = StepFailed("p", "m", "gone")
    gone.__cause__ = ModelCallFailed("m", Fault.MISSING, "HTTP 404")
    cases = [
        (BadRequest("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
        (refused, 400, grpc.StatusCode.INVALID_ARGUMENT),
        (gone, 503, grpc.StatusCode.UNAVAILABLE),
        (StepFailed("p", "m", "boom"), 500, grpc.StatusCode.INTERNAL),
        (NotServed("x"), 404, grpc.StatusCode.NOT_FOUND),
        (DeadlineExceeded("x"), 504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (RevisitLimitExceeded("p", "m", "x"), 508, grpc.StatusCode.ABORTED),
    ]
    for error, http, code in cases:
        mapped = failure(error)
        assert mapped is not None and (mapped.http, mapped.grpc) == (http, code), error
    assert failure(KeyError("bug")) is None
    assert len(new_request_id()) == 20


def test_kafka_values_decode_by_header_direction_or_json() -> None:
    request = message_to_request((Tensor("a", "INT32", (1,), [1]),)).SerializeToString()
    assert decode(request, None, Direction.INPUTS)[0].data == [1]
    assert decode(
        b'{"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [2]}]}', None, Direction.INPUTS
    )[0].data == [2]
    for bad in (b"", b"{}", b"\xff\xfe"):
        with pytest.raises(BadMessage):
            decode(bad, None, Direction.INPUTS)


async def test_a_run_started_by_a_join_window_expiring_takes_a_run_slot() -> None:
    """Every Kafka-path run takes a slot its end releases; a run started by an expired join window
    took none, so each one left the --max-runs bound one slot looser for good."""
    from pipelines.engine import feed as feed_module

    class ExpiredJoin:
        def next_deadline(self) -> float:
            return 0.0

        def expire(self, now_ms: float) -> bool:
            return True

    class SlotCountingRunner:
        def __init__(self) -> None:
            self.slots_taken = 0
            self.started: list[str] = []

        async def slot(self) -> None:
            self.slots_taken += 1

        def run_in_background(self, name: str, arrivals: object, headers: object) -> None:
            self.started.append(name)

    runner = SlotCountingRunner()
    feed = feed_module.PipelineFeed.__new__(feed_module.PipelineFeed)
    feed._runner = runner  # type: ignore[assignment]
    feed._name = "joined"
    feed._pending_seconds = 60.0
    feed._pending = {
        key: feed_module._Pending(ExpiredJoin(), 0.0, {})  # type: ignore[arg-type]
        for key in ("r1", "r2")
    }
    await feed._expire()
    assert runner.started == ["joined", "joined"]
    assert runner.slots_taken == 2
    assert feed._pending == {}


async def test_model_calls_ask_for_no_encoding_and_read_a_large_answer() -> None:
    """MLServer gzips an answer over 1 KB for a client that accepts it; the engine reads answers
    undecoded, so it must not ask (a regression: every large answer was 'malformed')."""
    seen: list[str | None] = []
    big = [{"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 600], "data": list(range(600))}]

    async def infer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding"))
        return web.json_response({"outputs": big})

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    models = EnvoyModels("127.0.0.1", port, timeout=5, connections=2)
    try:
        request = message_from_json(
            [{"name": "INPUT0", "datatype": "INT32", "shape": [1], "data": [1]}], field="inputs"
        )
        outputs, _ = await models.call("m", request, {})
    finally:
        await models.close()
        await runner.cleanup()
    assert seen == [None]
    assert [t.to_json()["data"] for t in outputs] == [list(range(600))]
