"""``model infer`` / ``model metadata``: payload conversion, route counting, REST and gRPC calls."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cli.errors import CliError
from cli.payload import infer_request
from cli.routes import format_route_map
from tests.cli.cli_fakes import FakeGrpcInference, FakeRestInference, invoke

PROTO_STYLE = (
    '{"model_name":"iris","inputs":[{"name":"input","contents":{"fp32_contents":[1,2,3,4]},'
    '"datatype":"FP32","shape":[1,4]}]}'
)
REST_STYLE = '{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}]}'


def test_proto_style_payload_parses_with_proto_field_names() -> None:
    request = infer_request(PROTO_STYLE, "other")
    assert request.model_name == "iris"  # given in the payload, so kept
    assert list(request.inputs[0].contents.fp32_contents) == [1, 2, 3, 4]
    assert list(request.inputs[0].shape) == [1, 4]


def test_rest_style_payload_converts_to_the_same_request() -> None:
    assert infer_request(REST_STYLE, "iris") == infer_request(PROTO_STYLE, "iris")


def test_empty_model_name_becomes_the_called_model() -> None:
    assert infer_request('{"inputs":[]}', "iris").model_name == "iris"


@pytest.mark.parametrize(
    ("datatype", "data", "field", "expected"),
    [
        ("INT64", [[1, 2], [3, 4]], "int64_contents", [1, 2, 3, 4]),
        ("INT32", [5], "int_contents", [5]),
        ("UINT8", [[7]], "uint_contents", [7]),
        ("UINT64", [9], "uint64_contents", [9]),
        ("FP64", [0.5], "fp64_contents", [0.5]),
        ("BOOL", [True, False], "bool_contents", [True, False]),
        ("BYTES", ["hello"], "bytes_contents", [b"hello"]),
        ("fp32", [[1.5]], "fp32_contents", [1.5]),
    ],
)
def test_rest_data_goes_to_the_typed_contents_field(
    datatype: str, data: object, field: str, expected: list[object]
) -> None:
    payload = json.dumps(
        {"inputs": [{"name": "x", "shape": [len(expected)], "datatype": datatype, "data": data}]}
    )
    tensor = infer_request(payload, "m").inputs[0]
    assert list(getattr(tensor.contents, field)) == expected
    assert tensor.datatype == datatype.upper()


def test_rest_parameters_and_outputs() -> None:
    payload = {
        "id": "req-1",
        "parameters": {"content_type": "np", "seed": 3, "ratio": 0.5, "flag": True},
        "inputs": [
            {
                "name": "x",
                "shape": [1],
                "datatype": "INT64",
                "data": [1],
                "parameters": {"content_type": "np"},
            }
        ],
        "outputs": [{"name": "predict"}],
    }
    request = infer_request(json.dumps(payload), "m")
    assert request.id == "req-1"
    assert request.parameters["content_type"].string_param == "np"
    assert request.parameters["seed"].int64_param == 3
    assert request.parameters["ratio"].double_param == 0.5
    assert request.parameters["flag"].bool_param is True
    assert request.inputs[0].parameters["content_type"].string_param == "np"
    assert [output.name for output in request.outputs] == ["predict"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "payload is not valid JSON"),
        ("[1, 2]", "payload must be a JSON object"),
        ('{"inputs":[{"name":"x","shape":[1],"datatype":"COMPLEX","data":[1]}]}', "datatype 'COMPLEX'"),
        ('{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}', "inputs[0].shape is missing"),
        ('{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":["a"]}]}', "inputs[0]:"),
        ('{"model_name": 5, "unknown_field": 1}', "not a ModelInferRequest"),
    ],
)
def test_bad_payloads(payload: str, message: str) -> None:
    with pytest.raises(CliError, match=message.replace("[", r"\[").replace("]", r"\]")):
        infer_request(payload, "m")


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, "map[]"),
        ({":iris_1:": 50}, "map[:iris_1::50]"),
        (
            {":tfsimples.pipeline:": 50, ":tfsimple2_1:": 50, ":tfsimple1_1:": 50},
            "map[:tfsimple1_1::50 :tfsimple2_1::50 :tfsimples.pipeline::50]",
        ),
    ],
)
def test_route_map_formatting(counts: dict[str, int], expected: str) -> None:
    assert format_route_map(counts) == expected


async def test_rest_infer_prints_the_body(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris", REST_STYLE, "--header", "X-Foo=bar"
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out)["model_name"] == "iris_1"
    [(path, headers, body)] = fake_rest.requests
    assert path == "/v2/models/iris/infer"
    assert headers["seldon-model"] == "iris"
    assert headers["X-Foo"] == "bar"
    assert "x-seldon-route" not in {key.lower() for key in headers}
    assert json.loads(body) == json.loads(REST_STYLE)


async def test_authority_sets_the_host_header(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    args = (
        "--inference-host",
        fake_rest.address,
        "model",
        "infer",
        "iris",
        "--authority",
        "iris.example",
        REST_STYLE,
    )
    assert await invoke(*args) == 0
    assert fake_rest.requests[0][1]["Host"] == "iris.example"


async def test_rest_iterations_count_routes(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris", "-i", "5", REST_STYLE
    )
    assert code == 0
    assert capsys.readouterr().out == "Success: map[:iris_1::5]\n"
    assert len(fake_rest.requests) == 5


async def test_sticky_session_resends_the_previous_route(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris", "-s", "-i", "3", REST_STYLE
    )
    assert code == 0
    sent = [headers.get("x-seldon-route") for _, headers, _ in fake_rest.requests]
    # Envoy answers with exactly the variant's token, and the CLI sends back exactly that.
    assert sent == [None, ":iris_1:", ":iris_1:"]
    assert capsys.readouterr().out == "Success: map[:iris_1::3]\n"


async def test_show_headers_goes_to_stderr(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris", "--show-headers", REST_STYLE
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "x-seldon-route: :iris_1:" in captured.err.lower()
    assert "x-seldon-route" not in captured.out.lower()


async def test_payload_from_file(
    fake_rest: FakeRestInference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = tmp_path / "request.json"
    payload.write_text(REST_STYLE)
    assert (
        await invoke(
            "--inference-host", fake_rest.address, "model", "infer", "iris", "--file-path", str(payload)
        )
        == 0
    )
    assert json.loads(fake_rest.requests[0][2]) == json.loads(REST_STYLE)
    assert await invoke("--inference-host", fake_rest.address, "model", "infer", "iris") == 1
    assert "either as an argument or with --file-path" in capsys.readouterr().err


async def test_rest_error_status(fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]) -> None:
    fake_rest.failing.add("iris")
    assert await invoke("--inference-host", fake_rest.address, "model", "infer", "iris", REST_STYLE) == 1
    assert capsys.readouterr().err == "Error: HTTP 503: upstream connect error\n"
    assert (
        await invoke("--inference-host", fake_rest.address, "model", "infer", "iris", "-i", "3", REST_STYLE)
        == 1
    )
    captured = capsys.readouterr()
    assert captured.out == "Success: map[]\n"
    assert captured.err == "Error: 3 of 3 calls failed; last error: HTTP 503: upstream connect error\n"


async def test_bad_payload_sends_nothing(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke("--inference-host", fake_rest.address, "model", "infer", "iris", "{oops") == 1
    assert capsys.readouterr().err.startswith("Error: payload is not valid JSON")
    assert fake_rest.requests == []


async def test_unreachable_inference_host(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
    assert await invoke("--inference-host", host, "model", "infer", "iris", REST_STYLE) == 1
    assert capsys.readouterr().err.startswith(f"Error: cannot reach inference server at {host}")


async def test_metadata(fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]) -> None:
    assert await invoke("--inference-host", fake_rest.address, "model", "metadata", "iris") == 0
    assert json.loads(capsys.readouterr().out)["inputs"][0]["shape"] == [-1, 4]
    path, headers, _ = fake_rest.requests[-1]
    assert (path, headers["seldon-model"]) == ("/v2/models/iris", "iris")
    assert (
        await invoke("--inference-host", fake_rest.address, "model", "metadata", "iris", "-o", "table") == 0
    )
    assert "FP32" in capsys.readouterr().out
    assert await invoke("--inference-host", fake_rest.address, "model", "metadata", "ghost") == 1
    assert capsys.readouterr().err == 'Error: HTTP 404: {"error": "model ghost not found"}\n'


@pytest.mark.parametrize("payload", [PROTO_STYLE, REST_STYLE])
async def test_grpc_infer_accepts_both_payload_styles(
    fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str], payload: str
) -> None:
    code = await invoke(
        "--inference-host", fake_grpc.address, "model", "infer", "iris", "--inference-mode", "grpc", payload
    )
    assert code == 0
    output = json.loads(capsys.readouterr().out)
    assert output["modelName"] == "iris_1"
    assert output["outputs"][0]["contents"]["int64Contents"] == ["2"]
    [(request, metadata)] = fake_grpc.requests
    assert request == infer_request(PROTO_STYLE, "iris")
    assert metadata["seldon-model"] == "iris"


async def test_grpc_iterations_sticky_and_headers(
    fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_grpc.address, "model", "infer", "iris", "--inference-mode", "grpc",
        "-i", "2", "-s", "--show-headers", "--header", "X-Foo=bar", REST_STYLE,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == "Success: map[:iris_1::2]\n"
    assert "Initial metadata:" in captured.err and "x-seldon-route: :iris_1:" in captured.err
    assert "Trailing metadata:" in captured.err and "x-trailer: done" in captured.err
    first, second = (metadata for _, metadata in fake_grpc.requests)
    assert first["x-foo"] == "bar" and "x-seldon-route" not in first
    assert second["x-seldon-route"] == ":iris_1:"


async def test_grpc_error(fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]) -> None:
    code = await invoke(
        "--inference-host",
        fake_grpc.address,
        "model",
        "infer",
        "missing",
        "--inference-mode",
        "grpc",
        REST_STYLE,
    )
    assert code == 1
    assert capsys.readouterr().err == "Error: NOT_FOUND: model missing not found\n"
