"""The model gateway's pure parts: payload detection, header rules, which models it serves, its flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.modelgateway import gateway
from pipelines.modelgateway.config import parse_config
from pipelines.modelgateway.envoy import _forwarded
from pipelines.modelgateway.follow import clean_on_delete, served
from pipelines.modelgateway.payloads import BadPayload, GrpcCall, RestCall, decode

IRIS = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]}
State = scheduler_pb2.ModelStatus


def proto_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="ignored")
    request.inputs.add(name="predict", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1, 2, 3, 4]
    )
    return request


def test_a_protobuf_request_is_a_grpc_call() -> None:
    call = decode(proto_request().SerializeToString(), None)
    assert isinstance(call, GrpcCall) and call.request.inputs[0].name == "predict"


def test_a_protobuf_response_becomes_the_next_request() -> None:
    response = pb.ModelInferResponse(model_name="up_1", id="r1", raw_output_contents=[b"\x00\x01"])
    output = response.outputs.add(name="OUTPUT0", datatype="INT32", shape=[1])
    output.parameters["content_type"].string_param = "np"
    response.parameters["p"].int64_param = 3
    call = decode(response.SerializeToString(), "proto/InferModelResponse")
    assert isinstance(call, GrpcCall)
    tensor = call.request.inputs[0]
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("OUTPUT0", "INT32", [1])
    assert tensor.parameters["content_type"].string_param == "np"
    assert call.request.raw_input_contents == [b"\x00\x01"] and call.request.id == "r1"
    assert call.request.parameters["p"].int64_param == 3


def test_json_is_a_rest_call_and_a_json_response_is_renamed_to_inputs() -> None:
    body = json.dumps(IRIS).encode()
    assert decode(body, None) == RestCall(body)
    assert decode(body, "json/inferModelRequest") == RestCall(body)
    renamed = decode(json.dumps({"model_name": "a_1", "outputs": IRIS["inputs"]}).encode(), None)
    assert isinstance(renamed, RestCall)
    assert json.loads(renamed.body) == IRIS
    assert isinstance(
        decode(json.dumps({"outputs": IRIS["inputs"]}).encode(), "json/inferModelResponse"), RestCall
    )


@pytest.mark.parametrize(
    ("value", "infer_type", "message"),
    [
        (None, None, "no value"),
        (b"", None, "no value"),
        (b"\xff\xfe garbage", None, "neither a protobuf"),
        (b"[1, 2]", None, "neither a protobuf"),
        (b'{"inputs": []}', None, "no 'inputs' list"),
        (b"{}", "json/inferModelRequest", "no 'inputs' list"),
        (b"not json", "json/inferModelRequest", "not JSON"),
        (b"\xff", "json/inferModelRequest", "not JSON"),
        (b'"text"', "json/inferModelResponse", "not an object"),
        (b"\xff\xfe", "proto/InferModelRequest", "not a protobuf ModelInferRequest"),
        (b"\xff\xfe", "proto/InferModelResponse", "not a protobuf ModelInferResponse"),
        (b"{}", "yaml/whatever", "is not one of"),
    ],
)
def test_a_malformed_value_says_what_is_wrong(
    value: bytes | None, infer_type: str | None, message: str
) -> None:
    with pytest.raises(BadPayload, match=message):
        decode(value, infer_type)


def test_routes_grow_and_the_answers_headers_win() -> None:
    request = [("x-seldon-route", b":a_1:"), ("x-foo", b"old"), ("x-request-id", b"k")]
    answer = [("x-seldon-route", b":b_1:"), ("x-foo", b"new")]
    merged = dict(gateway._merge(request, answer))
    assert merged == {"x-request-id": b"k", "x-seldon-route": b":a_1: :b_1:", "x-foo": b"new"}


def test_the_key_is_the_request_id_unless_the_message_names_one() -> None:
    assert gateway._with_request_id([("X-Foo", b"1")], b"key") == [("x-foo", b"1"), ("x-request-id", b"key")]
    assert gateway._with_request_id([("X-Request-Id", b"mine")], b"key") == [("x-request-id", b"mine")]
    assert gateway._with_request_id([], None) == []


@pytest.mark.parametrize(
    ("name", "value", "sent"),
    [
        ("x-foo", b"bar", True),
        ("traceparent", b"00-ab-cd-01", True),
        ("x-seldon-route", b":a_1:", False),  # Envoy would stick the call to the previous model's route
        ("content-type", b"text/plain", False),
        ("x-foo", "caf\u00e9".encode(), False),
        ("x-foo", b"a\nb", False),
        ("x-f oo", b"bar", False),
        ("x-foo", b"x" * 9000, False),
    ],
)
def test_only_valid_x_headers_reach_the_model(name: str, value: bytes, sent: bool) -> None:
    assert _forwarded(name, value) is sent


def status(
    *states: State.ModelState.ValueType, deleted: bool = False, clean: bool = False
) -> scheduler_pb2.ModelStatusResponse:
    response = scheduler_pb2.ModelStatusResponse(modelName="iris", deleted=deleted)
    for number, state in enumerate(states, start=1):
        version = response.versions.add(version=number, state=State(state=state))
        version.modelDefn.dataflowSpec.cleanTopicsOnDelete = clean
    return response


def test_a_model_is_served_from_its_declaration_until_it_goes() -> None:
    assert served(status(State.ModelProgressing))
    assert served(status(State.ModelFailed))  # its requests get Envoy's answer on the errors topic
    assert served(status(State.ModelTerminated, State.ModelAvailable))
    assert not served(status(State.ModelTerminating))
    assert not served(status(State.ModelAvailable, deleted=True))
    assert not served(status())


def test_topics_are_cleaned_only_when_the_newest_version_asks() -> None:
    assert clean_on_delete(status(State.ModelAvailable, clean=True))
    assert not clean_on_delete(status(State.ModelAvailable))
    assert not clean_on_delete(status())
    keep = status(State.ModelAvailable, clean=True)
    keep.keepTopics = True
    assert not clean_on_delete(keep)


def test_flags_and_environment_configure_the_gateway(tmp_path: Path) -> None:
    (tmp_path / "kafka.json").write_text(json.dumps({"bootstrap.servers": "k:9092", "namespace": "ns1"}))
    env = {
        "MESHSERVE_MODELGATEWAY_WORKERS": "3",
        "MESHSERVE_MODELGATEWAY_KAFKA_CONFIG": str(tmp_path / "kafka.json"),
    }
    config, kafka = parse_config(["--envoy-port=9100", "--kafka-partitions=4"], env)
    assert (config.workers, config.envoy_port) == (3, 9100)
    assert (kafka.bootstrap_servers, kafka.namespace, kafka.partitions) == (("k:9092",), "ns1", 4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "bootstrap.servers is missing"),
        (["--kafka-bootstrap=nohost"], "is not HOST:PORT"),
        (["--kafka-bootstrap=k:1", "--workers=0"], "is not within 1..1024"),
        (["--kafka-bootstrap=k:1", "--tls-ca=/ca"], "TLS needs"),
        (["--kafka-bootstrap=k:1", "--log-level=loud"], "--log-level"),
        (["--kafka-bootstrap=k:1", "--request-timeout-seconds=99999"], "above"),
    ],
)
def test_bad_flags_end_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config(argv, {})
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
