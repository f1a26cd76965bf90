"""``experiment start|stop|status|list`` against a fake scheduler (a real grpc.aio server), and
``model infer`` against an experiment's endpoint through fake Envoy routing."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import grpc
import pytest

from apis.mlops.scheduler import scheduler_pb2
from tests.cli.cli_fakes import (
    FakeGrpcInference,
    FakeRestInference,
    FakeScheduler,
    experiment_status,
    invoke,
)

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "experiments" / "ab-default-model.yaml"
AB_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata:
  name: ab
spec:
  default: iris
  candidates:
  - name: iris
    weight: 50
  - name: iris2
    weight: 50
"""
MIRROR_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata:
  name: shadow
  namespace: seldon-mesh
  generation: 3
spec:
  resourceType: model
  candidates:
  - name: iris3
    weight: 100
  mirror:
    name: iris4
    percent: 25
  config:
    stickySessions: true
"""
REST_STYLE = '{"inputs":[{"name":"predict","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}]}'
ACTIVE_JSON = {
    "experimentName": "ab",
    "active": True,
    "candidatesReady": True,
    "mirrorReady": True,
    "statusDescription": "experiment active",
    "kubernetesMeta": {},
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return str(path)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


async def test_start_sends_each_document_and_prints_empty_json(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, AB_YAML + "---\n" + MIRROR_YAML + "---\n")
    code = await invoke("--scheduler-host", fake_scheduler.address, "experiment", "start", "-f", path)
    assert code == 0
    assert lines(capsys.readouterr().out) == ["{}", "{}"]
    ab, shadow = (r.experiment for r in fake_scheduler.of_type(scheduler_pb2.StartExperimentRequest))
    assert ab == scheduler_pb2.Experiment(
        name="ab",
        default="iris",
        candidates=[
            scheduler_pb2.ExperimentCandidate(name="iris", weight=50),
            scheduler_pb2.ExperimentCandidate(name="iris2", weight=50),
        ],
        resourceType=scheduler_pb2.MODEL,
    )
    assert not shadow.HasField("default")
    assert (shadow.mirror.name, shadow.mirror.percent) == ("iris4", 25)
    assert shadow.config.stickySessions is True
    assert (shadow.kubernetesMeta.namespace, shadow.kubernetesMeta.generation) == ("seldon-mesh", 3)


async def test_start_show_request_prints_the_request_json(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, AB_YAML)
    code = await invoke("experiment", "start", "-r", "-f", path, "--scheduler-host", fake_scheduler.address)
    assert code == 0
    request, response = lines(capsys.readouterr().out)
    assert json.loads(request)["experiment"]["candidates"][1] == {"name": "iris2", "weight": 50}
    assert response == "{}"


async def test_the_sample_parses(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    code = await invoke("--scheduler-host", fake_scheduler.address, "experiment", "start", "-f", str(SAMPLE))
    assert code == 0
    [request] = fake_scheduler.of_type(scheduler_pb2.StartExperimentRequest)
    assert request.experiment.default == "iris"
    assert [(c.name, c.weight) for c in request.experiment.candidates] == [("iris", 50), ("iris2", 50)]


def _spec(extra: str) -> str:
    return AB_YAML + extra


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [oops\n", "document 1: invalid YAML at line 2"),
        (AB_YAML.replace("kind: Experiment", "kind: Model"), "kind is 'Model'; 'experiment start' takes"),
        (AB_YAML.replace("v1alpha1", "v2"), "apiVersion is 'mlops.seldon.io/v2'"),
        (_spec("  shadow: true\n"), "document 1: unknown field spec.shadow"),
        (AB_YAML.replace("  - name: iris2", "  - modelName: iris2"), "spec.candidates[1].modelName: use"),
        (AB_YAML.replace("    weight: 50\n  - name: iris2", "    weight: 50\n    ratio: 1\n  - name: iris2"),
         "unknown field spec.candidates[0].ratio"),
        (AB_YAML.split("  candidates:")[0], "spec.candidates is missing"),
        (AB_YAML.split("  candidates:")[0] + "  candidates: []\n", "spec.candidates is missing"),
        (AB_YAML.split("  candidates:")[0] + "  candidates: iris\n", "spec.candidates must be a list"),
        (AB_YAML.replace("weight: 50", "weight: fifty", 1), "candidates[0].weight must be a non-negative"),
        (AB_YAML.replace("weight: 50", "weight: -5", 1), "spec.candidates[0].weight must be a non-negative"),
        (AB_YAML.replace("    weight: 50\n", "", 1), "spec.candidates[0].weight is missing"),
        (AB_YAML.replace("name: ab", "name: A_B"), "experiment name 'A_B' is invalid"),
        (AB_YAML.replace("  - name: iris2", "  - name: Iris2"), "spec.candidates[1]: model name 'Iris2'"),
        (AB_YAML.replace("default: iris", "default: iris9"), "default 'iris9' must be one of the candidates"),
        (AB_YAML.replace("weight: 50", "weight: 0"), "all candidate weights are zero"),
        (AB_YAML.replace("name: iris2", "name: iris"), "candidate 'iris' is listed twice"),
        (_spec("  mirror:\n    name: iris2\n    percent: 10\n"), "mirror 'iris2' is also a candidate"),
        (_spec("  mirror:\n    name: iris5\n    percent: 0\n"), "mirror percent must be 1..100, got 0"),
        (_spec("  mirror:\n    name: iris5\n"), "spec.mirror.percent is missing"),
        (_spec("  resourceType: modle\n"), "resourceType 'modle' is unknown; use one of: model, pipeline"),
        (_spec("  config:\n    stickySessions: yes please\n"), "stickySessions must be true or false"),
        (AB_YAML + "---\n" + AB_YAML, "document 2: experiment 'ab' is already defined in document 1"),
        (AB_YAML + "---\n" + AB_YAML.replace("name: ab", "name: cd").replace("weight: 50", "weight: 0"),
         "document 2: experiment cd: all candidate weights are zero"),
        ("---\n", "no Experiment documents found"),
    ],
)  # fmt: skip
async def test_bad_manifest_sends_nothing(
    fake_scheduler: FakeScheduler,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    path = write(tmp_path, content)
    code = await invoke("--scheduler-host", fake_scheduler.address, "experiment", "start", "-f", path)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.startswith(f"Error: {path}: "), captured.err
    assert message in captured.err
    assert fake_scheduler.requests == []


async def test_missing_file(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    code = await invoke(
        "--scheduler-host", fake_scheduler.address, "experiment", "start", "-f", "/no/such.yaml"
    )
    assert code == 1
    assert capsys.readouterr().err == "Error: /no/such.yaml: No such file or directory\n"


async def test_start_rejected_by_scheduler_prints_its_message(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "experiment ab: model iris is already the default of experiment other"
    fake_scheduler.start_error = (grpc.StatusCode.INVALID_ARGUMENT, message)
    code = await invoke(
        "--scheduler-host", fake_scheduler.address, "experiment", "start", "-f", write(tmp_path, AB_YAML)
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err == f"Error: {message}\n"


async def test_unreachable_scheduler(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
    code = await invoke("--scheduler-host", host, "experiment", "start", "-f", write(tmp_path, AB_YAML))
    assert code == 1
    assert capsys.readouterr().err.startswith(f"Error: cannot reach scheduler at {host}")


async def test_stop(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake_scheduler.experiments["ab"] = [experiment_status("ab")]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "stop", "ab") == 0
    assert capsys.readouterr().out == "{}\n"
    [stop] = fake_scheduler.of_type(scheduler_pb2.StopExperimentRequest)
    assert stop.name == "ab"
    assert "ab" not in fake_scheduler.experiments


async def test_stop_unknown_experiment(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "stop", "ghost") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "Error: experiment 'ghost' not found; 'meshserve experiment list' shows the experiments that exist\n"
    )


@pytest.mark.parametrize("command", ["stop", "status"])
async def test_bad_name_sends_nothing(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", command, "../x") == 1
    assert "experiment name '../x' is invalid" in capsys.readouterr().err
    assert fake_scheduler.requests == []


async def test_status_prints_seldons_json(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.experiments["ab"] = [experiment_status("ab")]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "status", "ab") == 0
    out = capsys.readouterr().out
    assert out == json.dumps(ACTIVE_JSON, separators=(",", ":")) + "\n"
    [request] = fake_scheduler.of_type(scheduler_pb2.ExperimentStatusRequest)
    assert request.name == "ab" and request.subscriberName == "meshserve-cli"


async def test_status_of_an_inactive_experiment_shows_false_and_the_reason(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.experiments["ab"] = [experiment_status("ab", active=False, candidates=False)]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "status", "ab") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {
        **ACTIVE_JSON,
        "active": False,
        "candidatesReady": False,
        "statusDescription": "candidate iris2 not ready",
    }
    assert (
        await invoke("--scheduler-host", fake_scheduler.address, "experiment", "status", "ab", "-o", "table")
        == 0
    )
    table = capsys.readouterr().out
    assert "candidates ready" in table
    assert "ab" in table and "false" in table and "candidate iris2 not ready" in table


async def test_status_unknown_experiment(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra in ((), ("-w",)):
        assert (
            await invoke("--scheduler-host", fake_scheduler.address, "experiment", "status", "ghost", *extra)
            == 1
        )
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("Error: experiment 'ghost' not found; ")


async def test_status_wait_polls_until_active(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = experiment_status("ab", active=False, description="waiting for every Envoy to apply")
    fake_scheduler.experiments["ab"] = [waiting, waiting, experiment_status("ab")]
    code = await invoke("--scheduler-host", fake_scheduler.address, "experiment", "status", "ab", "-w")
    assert code == 0
    assert json.loads(capsys.readouterr().out) == ACTIVE_JSON
    assert len(fake_scheduler.of_type(scheduler_pb2.ExperimentStatusRequest)) == 3


async def test_status_wait_timeout_names_what_is_missing(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.experiments["ab"] = [
        experiment_status("ab", active=False, description="candidate iris2 not ready")
    ]
    started = time.monotonic()
    code = await invoke(
        "--scheduler-host",
        fake_scheduler.address,
        "experiment",
        "status",
        "ab",
        "-w",
        "--wait-timeout",
        "0.5",
    )
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err == (
        "Error: Experiment wait status timeout: experiment 'ab' is not active after 0.5s: "
        "candidate iris2 not ready (check its models with 'meshserve model list')\n"
    )
    assert 0.4 < elapsed < 5


async def test_list_table_and_json(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "list") == 0
    assert lines(capsys.readouterr().out) == [
        "experiment  active  candidates ready  mirror ready  description"
    ]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "list", "-o", "json") == 0
    assert capsys.readouterr().out == "[]\n"

    fake_scheduler.experiments["zz"] = [experiment_status("zz", active=False, mirror=False)]
    fake_scheduler.experiments["ab"] = [experiment_status("ab")]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "list") == 0
    header, first, second = lines(capsys.readouterr().out)
    assert header.split() == ["experiment", "active", "candidates", "ready", "mirror", "ready", "description"]
    assert first.split() == ["ab", "true", "true", "true", "experiment", "active"]
    assert second.split()[:4] == ["zz", "false", "true", "false"]
    assert await invoke("--scheduler-host", fake_scheduler.address, "experiment", "list", "-o", "json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [item["experimentName"] for item in shown] == ["ab", "zz"]
    assert shown[0] == ACTIVE_JSON
    assert shown[1]["mirrorReady"] is False


# -- traffic to an experiment ---------------------------------------------------------------------


async def test_infer_through_the_experiment_header_counts_both_routes(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.routes["ab.experiment"] = [("iris_1", 50), ("iris2_1", 50)]
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris",
        "--header", "seldon-model=ab.experiment", "-i", "100", REST_STYLE,
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == "Success: map[:iris2_1::50 :iris_1::50]\n"
    assert {headers["seldon-model"] for _, headers, _ in fake_rest.requests} == {"ab.experiment"}
    assert {path for path, _, _ in fake_rest.requests} == {"/v2/models/iris/infer"}


async def test_infer_the_experiment_endpoint_by_name(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.routes["ab.experiment"] = [("iris_1", 30), ("iris2_1", 70)]
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "ab.experiment", "-i", "10", REST_STYLE
    )
    assert code == 0
    assert capsys.readouterr().out == "Success: map[:iris2_1::7 :iris_1::3]\n"
    assert fake_rest.requests[0][0] == "/v2/models/ab.experiment/infer"
    assert (
        await invoke("--inference-host", fake_rest.address, "model", "infer", "A.experiment", REST_STYLE) == 1
    )
    assert "experiment name 'A' is invalid" in capsys.readouterr().err


async def test_sticky_session_stays_on_one_variant_over_rest(
    fake_rest: FakeRestInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.routes["ab.experiment"] = [("iris_1", 50), ("iris2_1", 50)]
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "ab.experiment", "-s", "-i", "20", REST_STYLE
    )
    assert code == 0
    assert capsys.readouterr().out == "Success: map[:iris_1::20]\n"
    sent = [headers.get("x-seldon-route") for _, headers, _ in fake_rest.requests]
    assert sent == [None] + [":iris_1:"] * 19  # exactly the token Envoy answered with, never piled up


async def test_header_model_replaces_the_default_over_grpc_and_sticky_holds(
    fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_grpc.routes["ab.experiment"] = [("iris_1", 50), ("iris2_1", 50)]
    base = ("--inference-host", fake_grpc.address, "model", "infer", "iris", "--inference-mode", "grpc")
    code = await invoke(*base, "--header", "Seldon-Model=ab.experiment", "-i", "10", REST_STYLE)
    assert code == 0
    assert capsys.readouterr().out == "Success: map[:iris2_1::5 :iris_1::5]\n"
    for metadata in fake_grpc.raw_metadata:
        assert [value for key, value in metadata if key == "seldon-model"] == ["ab.experiment"]

    fake_grpc.raw_metadata.clear()
    code = await invoke(*base, "--header", "seldon-model=ab.experiment", "-s", "-i", "10", REST_STYLE)
    assert code == 0
    [(route, count)] = [
        line.split("::") for line in [capsys.readouterr().out.strip()[len("Success: map[") : -1]]
    ]
    assert count == "10" and route in {":iris_1", ":iris2_1"}
    sticky = [dict(metadata).get("x-seldon-route") for metadata in fake_grpc.raw_metadata]
    assert sticky[0] is None and len(set(sticky[1:])) == 1


async def test_no_route_errors_say_what_to_check(
    fake_rest: FakeRestInference, fake_grpc: FakeGrpcInference, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_rest.unrouted.add("ab.experiment")
    code = await invoke(
        "--inference-host", fake_rest.address, "model", "infer", "iris",
        "--header", "Seldon-Model=ab.experiment", REST_STYLE,
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err == (
        "Error: HTTP 404: no route for seldon-model 'ab.experiment': check 'meshserve model status' "
        "(or 'meshserve experiment status' for <name>.experiment)\n"
    )
    code = await invoke(
        "--inference-host", fake_grpc.address, "model", "infer", "unrouted.experiment",
        "--inference-mode", "grpc", REST_STYLE,
    )  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err.startswith(
        "Error: UNIMPLEMENTED: no route for seldon-model 'unrouted.experiment': check"
    )
