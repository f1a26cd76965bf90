"""``pipeline infer``: ``model infer``'s machinery with the pipeline's route (seldon-model
``<p>.pipeline``), over REST and gRPC, against the fake Envoys of cli_fakes (argument handling and
what is sent; tests/e2e/test_cli_pipelines.py calls a real Envoy)."""

from __future__ import annotations

import json

import pytest

from tests.cli.cli_fakes import FakeGrpcInference, FakeRestInference, invoke

TFSIMPLE = (
    '{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,2],"data":[1,2]},'
    '{"name":"INPUT1","datatype":"INT32","shape":[1,2],"data":[1,2]}]}'
)


async def test_rest_sends_the_pipeline_route(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_rest.address, "pipeline", "infer", "tfsimples", TFSIMPLE,
        "--header", "x-request-id=test-id", "--header", "X-Foo=bar",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["model_name"] == "tfsimples.pipeline_1"
    [(path, headers, body)] = fake_rest.requests
    assert path == "/v2/models/tfsimples/infer"
    assert headers["seldon-model"] == "tfsimples.pipeline"
    lowered = {key.lower(): value for key, value in headers.items()}  # aiohttp writes X-Request-ID
    assert (lowered["x-request-id"], lowered["x-foo"]) == ("test-id", "bar")
    assert json.loads(body) == json.loads(TFSIMPLE)


async def test_the_suffix_may_be_given(fake_rest: FakeRestInference) -> None:
    host = ("--inference-host", fake_rest.address)
    assert await invoke(*host, "pipeline", "infer", "p.pipeline", TFSIMPLE) == 0
    [(path, headers, _)] = fake_rest.requests
    assert (path, headers["seldon-model"]) == ("/v2/models/p/infer", "p.pipeline")


async def test_iterations_sticky_and_headers(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.routes["ab.pipeline"] = [("ab.pipeline", 50), ("other.pipeline", 50)]
    code = await invoke(
        "--inference-host", fake_rest.address, "pipeline", "infer", "ab", "-i", "4", "-s", "--show-headers",
        TFSIMPLE,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    sent = [headers.get("x-seldon-route") for _, headers, _ in fake_rest.requests]
    assert sent[0] is None and len(set(sent[1:])) == 1  # every later call follows the first route
    [(only, count)] = [line.split("::") for line in [captured.out.strip()[len("Success: map[") : -1]]]
    assert only in {":ab.pipeline", ":other.pipeline"} and count == "4"
    assert captured.err.lower().count("x-seldon-route: ") == 4


async def test_grpc_sends_the_pipeline_route(
    fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--inference-host", fake_grpc.address, "pipeline", "infer", "tfsimples", "--inference-mode", "grpc",
        "--header", "X-Request-Id=abc", TFSIMPLE,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    [(request, metadata)] = fake_grpc.requests
    assert metadata["seldon-model"] == "tfsimples.pipeline"
    assert metadata["x-request-id"] == "abc"
    assert request.model_name == "tfsimples"
    assert list(request.inputs[0].contents.int_contents) == [1, 2]
    assert json.loads(capsys.readouterr().out)["modelName"] == "tfsimples.pipeline_1"


async def test_unknown_pipeline_says_so(
    fake_rest: FakeRestInference, fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.unrouted.add("nosuch.pipeline")
    assert await invoke("--inference-host", fake_rest.address, "pipeline", "infer", "nosuch", TFSIMPLE) == 1
    assert capsys.readouterr().err == (
        "Error: HTTP 404: pipeline 'nosuch' not found: no route for seldon-model 'nosuch.pipeline'; "
        "check 'meshserve pipeline status nosuch' ('meshserve pipeline list' shows the pipelines)\n"
    )
    code = await invoke(
        "--inference-host", fake_grpc.address, "pipeline", "infer", "unrouted", "--inference-mode", "grpc",
        TFSIMPLE,
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err.startswith("Error: UNIMPLEMENTED: pipeline 'unrouted' not found: no route")


async def test_a_failing_pipeline_passes_the_gateways_message_on(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.failing.add("broken.pipeline")
    assert await invoke("--inference-host", fake_rest.address, "pipeline", "infer", "broken", TFSIMPLE) == 1
    assert capsys.readouterr().err == "Error: HTTP 503: upstream connect error\n"
    host = ("--inference-host", fake_rest.address)
    assert await invoke(*host, "pipeline", "infer", "broken", "-i", "3", TFSIMPLE) == 1
    assert "3 of 3 calls failed; last error: HTTP 503" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["Bad_Name", TFSIMPLE], "pipeline name 'Bad_Name' is invalid"),
        (["p", "not json"], "payload is not valid JSON"),
        (["p"], "either as an argument or with --file-path"),
    ],
)
async def test_bad_input_sends_nothing(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert await invoke("--inference-host", fake_rest.address, "pipeline", "infer", *argv) == 1
    assert message in capsys.readouterr().err
    assert fake_rest.requests == []


async def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    assert main(["pipeline", "infer", "p", "-i", "0", TFSIMPLE]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["pipeline", "infer", "p", "--inference-mode", "http", TFSIMPLE]) == 2
