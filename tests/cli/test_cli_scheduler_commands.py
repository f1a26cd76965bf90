"""Commands against a fake scheduler: exit codes, output, and that bad input sends nothing."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import stack.commands
from apis.mlops.scheduler import scheduler_pb2
from cli.main import main, parse_args
from cli.output import human_bytes
from tests.cli.cli_fakes import FakeScheduler, invoke, model_status


@pytest.fixture(autouse=True)
def _artifacts(tmp_path: Path) -> None:
    """The manifests below name ./artifacts/iris, which the CLI checks exists."""
    (tmp_path / "artifacts" / "iris").mkdir(parents=True)


IRIS_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata:
  name: iris
spec:
  storageUri: ./artifacts/iris
  requirements: [sklearn]
  memory: 100Ki
"""
BAD_SECOND = IRIS_YAML + "---\n" + IRIS_YAML.replace("name: iris", "name: Iris2")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


async def test_load_sends_each_document_and_prints_empty_json(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "iris.yaml"
    manifest.write_text(IRIS_YAML + "---\n" + IRIS_YAML.replace("name: iris", "name: iris2"))
    code = await invoke("--scheduler-host", fake_scheduler.address, "model", "load", "-f", str(manifest))
    assert code == 0
    assert lines(capsys.readouterr().out) == ["{}", "{}"]
    loads = fake_scheduler.of_type(scheduler_pb2.LoadModelRequest)
    assert [load.model.meta.name for load in loads] == ["iris", "iris2"]
    assert loads[0].model.modelSpec.uri == f"file://{tmp_path}/artifacts/iris"
    assert loads[0].model.modelSpec.memoryBytes == 102400


async def test_load_show_request_prints_the_request_json(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "iris.yaml"
    manifest.write_text(IRIS_YAML)
    code = await invoke(
        "model", "load", "-f", str(manifest), "--show-request", "--scheduler-host", fake_scheduler.address
    )
    assert code == 0
    request, response = lines(capsys.readouterr().out)
    assert json.loads(request)["model"]["modelSpec"]["memoryBytes"] == "102400"
    assert json.loads(request)["model"]["deploymentSpec"] == {"replicas": 1}
    assert response == "{}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (BAD_SECOND, "document 2: model name 'Iris2' is invalid"),
        ("kind: [oops\n", "document 1: invalid YAML at line 2"),
        (IRIS_YAML.replace("kind: Model", "kind: Pipeline"), "document 1: kind is 'Pipeline'"),
        (IRIS_YAML.replace("  storageUri: ./artifacts/iris\n", ""), "document 1: spec.storageUri is missing"),
        (IRIS_YAML.replace("name: iris", "name: ../x"), "document 1: model name '../x' is invalid"),
        (IRIS_YAML.replace("name: iris", "name: " + "a" * 300), "document 1: model name is 300 characters"),
    ],
)
async def test_bad_manifest_sends_nothing(
    fake_scheduler: FakeScheduler,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(content)
    code = await invoke("--scheduler-host", fake_scheduler.address, "model", "load", "-f", str(manifest))
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err.startswith(f"Error: {manifest}: ")
    assert message in captured.err
    assert fake_scheduler.requests == []


async def test_load_rejected_by_scheduler(
    fake_scheduler: FakeScheduler, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.load_error = (grpc.StatusCode.INVALID_ARGUMENT, "no server has capability sklearn")
    manifest = tmp_path / "iris.yaml"
    manifest.write_text(IRIS_YAML)
    code = await invoke("--scheduler-host", fake_scheduler.address, "model", "load", "-f", str(manifest))
    assert code == 1
    assert capsys.readouterr().err == "Error: no server has capability sklearn\n"


async def test_unload(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ModelAvailable")]
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "unload", "iris") == 0
    assert capsys.readouterr().out == "{}\n"
    [unload] = fake_scheduler.of_type(scheduler_pb2.UnloadModelRequest)
    assert unload.model.name == "iris"


async def test_unload_unknown_model_reports_scheduler_details(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "unload", "ghost") == 1
    assert capsys.readouterr().err == "Error: model ghost not found\n"


@pytest.mark.parametrize("name", ["../x", "Iris", "a" * 300, "under_score"])
async def test_invalid_names_send_nothing(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    for command in (["model", "unload", name], ["model", "status", name], ["server", "status", name]):
        assert await invoke("--scheduler-host", fake_scheduler.address, *command) == 1
        assert capsys.readouterr().err.startswith("Error: ")
    assert fake_scheduler.requests == []


async def test_status_prints_the_first_response_as_json(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ModelAvailable")]
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "status", "iris") == 0
    output = json.loads(capsys.readouterr().out)
    assert output["modelName"] == "iris"
    assert output["versions"][0]["state"] == {"state": "ModelAvailable", "availableReplicas": 1}
    [request] = fake_scheduler.of_type(scheduler_pb2.ModelStatusRequest)
    assert request.model.name == "iris"
    assert request.allVersions is False


async def test_status_table(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ModelProgressing", replicas=2)]
    assert (
        await invoke("--scheduler-host", fake_scheduler.address, "model", "status", "iris", "-o", "table")
        == 0
    )
    out = capsys.readouterr().out
    assert "ModelProgressing" in out
    assert "0/2" in out


async def test_status_of_unknown_model(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "status", "ghost") == 1
    assert capsys.readouterr().err == "Error: model ghost not found\n"


async def test_wait_polls_until_the_state_is_reached(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.models["iris"] = [
        model_status("iris", "ModelProgressing"),
        model_status("iris", "ModelProgressing"),
        model_status("iris", "ModelAvailable"),
    ]
    code = await invoke(
        "--scheduler-host", fake_scheduler.address, "model", "status", "iris", "-w", "ModelAvailable"
    )
    assert code == 0
    assert capsys.readouterr().out == "{}\n"
    assert len(fake_scheduler.of_type(scheduler_pb2.ModelStatusRequest)) == 3


async def test_wait_looks_at_the_latest_version(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    status = model_status("iris", "ModelProgressing", version=2)
    status.versions.append(model_status("iris", "ModelAvailable", version=1).versions[0])
    fake_scheduler.models["iris"] = [status]
    code = await invoke(
        "--scheduler-host",
        fake_scheduler.address,
        "model",
        "status",
        "iris",
        "-w",
        "ModelAvailable",
        "--wait-timeout",
        "0.3",
    )
    assert code == 1
    assert capsys.readouterr().err == "Error: Model wait status timeout\n"


async def test_wait_times_out(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ModelFailed", reason="no memory")]
    code = await invoke(
        "--scheduler-host",
        fake_scheduler.address,
        "model",
        "status",
        "iris",
        "-w",
        "ModelAvailable",
        "--wait-timeout",
        "0.5",
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert captured.err == "Error: Model wait status timeout\n"
    assert len(fake_scheduler.of_type(scheduler_pb2.ModelStatusRequest)) >= 2


async def test_wait_for_terminated_accepts_a_forgotten_model(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await invoke(
        "--scheduler-host", fake_scheduler.address, "model", "status", "gone", "-w", "ModelTerminated"
    )
    assert code == 0
    assert capsys.readouterr().out == "{}\n"


def test_wait_for_an_unknown_state_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "status", "iris", "-w", "Ready"]) == 2
    assert "invalid choice" in capsys.readouterr().err


async def test_list_table_and_json(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ModelAvailable")]
    fake_scheduler.models["tfsimple"] = [
        model_status("tfsimple", "ScheduleFailed", reason="no matching server")
    ]
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "list") == 0
    table = capsys.readouterr().out
    assert lines(table)[0].split() == ["model", "version", "state", "server", "replicas", "reason"]
    assert "iris" in table and "ModelAvailable" in table and "1/1" in table
    assert "no matching server" in table
    assert await invoke("--scheduler-host", fake_scheduler.address, "model", "list", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [item["modelName"] for item in listed] == ["iris", "tfsimple"]
    assert all(
        not request.HasField("model") for request in fake_scheduler.of_type(scheduler_pb2.ModelStatusRequest)
    )


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536 * 2**20, 2**50)] == [
        "0B",
        "1023B",
        "1.0KiB",
        "1.5GiB",
        "1024.0TiB",
    ]


def _server(name: str, models: int) -> scheduler_pb2.ServerStatusResponse:
    return scheduler_pb2.ServerStatusResponse(
        serverName=name,
        expectedReplicas=1,
        availableReplicas=1,
        numLoadedModelReplicas=models,
        resources=[
            scheduler_pb2.ServerReplicaResources(
                replicaIdx=0, totalMemoryBytes=2**30, availableMemoryBytes=2**29, numLoadedModels=models
            )
        ],
    )


async def test_server_list_and_status(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_scheduler.servers = [_server("triton", 0), _server("mlserver", 2)]
    assert await invoke("--scheduler-host", fake_scheduler.address, "server", "list") == 0
    table = capsys.readouterr().out
    assert table.index("mlserver") < table.index("triton")
    assert "512.0MiB/1.0GiB" in table
    assert await invoke("--scheduler-host", fake_scheduler.address, "server", "list", "-o", "json") == 0
    assert [s["serverName"] for s in json.loads(capsys.readouterr().out)] == ["mlserver", "triton"]
    assert await invoke("--scheduler-host", fake_scheduler.address, "server", "status", "mlserver") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["serverName"] == "mlserver"
    assert status["resources"][0]["numLoadedModels"] == 2
    requests = fake_scheduler.of_type(scheduler_pb2.ServerStatusRequest)
    assert requests[-1].name == "mlserver"
    assert not requests[0].HasField("name")


async def test_server_status_of_unknown_server(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "server", "status", "ghost") == 1
    assert capsys.readouterr().err == "Error: server 'ghost' not found\n"


async def test_scheduler_status(fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str]) -> None:
    assert await invoke("--scheduler-host", fake_scheduler.address, "scheduler", "status") == 0
    assert json.loads(capsys.readouterr().out) == {"applicationVersion": "fake-1.2.3"}


async def test_scheduler_host_from_the_environment(
    fake_scheduler: FakeScheduler, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHSERVE_CLI_SCHEDULER_HOST", fake_scheduler.address)
    assert await invoke("scheduler", "status") == 0
    assert "fake-1.2.3" in capsys.readouterr().out


def test_connection_settings_come_from_cli_variables_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unprefixed names belonged to other processes too (MESHSERVE_INFERENCE_HOST was MLServer to the
    # agent); the CLI reads only its own.
    monkeypatch.setenv("MESHSERVE_INFERENCE_HOST", "mlserver.example:8080")
    monkeypatch.setenv("MESHSERVE_CLI_TIMEOUT", "3")
    args = parse_args(["model", "list"])
    assert (args.scheduler_host, args.inference_host, args.timeout) == ("127.0.0.1:9004", "127.0.0.1:9000", 3)
    monkeypatch.setenv("MESHSERVE_CLI_INFERENCE_HOST", "envoy.example:9000")
    args = parse_args(["--timeout", "5", "model", "list", "--inference-host", "other:9000"])
    assert (args.inference_host, args.timeout) == ("other:9000", 5)
    assert parse_args(["model", "list"]).inference_host == "envoy.example:9000"


def test_a_bad_cli_variable_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESHSERVE_CLI_TIMEOUT", "soon")
    assert main(["model", "list"]) == 2
    assert "MESHSERVE_CLI_TIMEOUT='soon'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_unreachable_scheduler_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    host = f"127.0.0.1:{_free_port()}"
    assert main(["--scheduler-host", host, "--timeout", "2", "model", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: cannot reach scheduler at {host}: ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["model", "load"]) == 2
    assert main(["--timeout", "0", "model", "list"]) == 2
    assert main(["model", "infer", "iris", "{}", "--header", "no-equals"]) == 2
    assert main(["model", "infer", "iris", "{}", "-i", "0"]) == 2
    assert main(["model", "infer", "iris", "-i", "2", "{}", "{}"]) == 2
    assert main(["model", "list", "--bogus"]) == 2
    capsys.readouterr()


def test_stack_commands_dispatch_to_stack_module(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, argparse.Namespace]] = []

    def command(name: str, code: int) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            seen.append((name, args))
            return code

        return run

    monkeypatch.setattr(stack.commands, "up", command("up", 0))
    monkeypatch.setattr(stack.commands, "down", command("down", 3))
    monkeypatch.setattr(stack.commands, "status", command("status", 0))
    monkeypatch.setenv("MESHSERVE_HOME", "/tmp/mesh-home")
    monkeypatch.setenv("MESHSERVE_STACK_XDS_PORT", "19002")
    assert main(["up", "-d", "--no-demo", "--http-port", "19000"]) == 0
    assert main(["down"]) == 3
    assert main(["status", "--home", "/elsewhere"]) == 0
    (_, up), (_, down), (_, status) = seen
    assert (up.detach, up.no_demo, up.http_port, up.scheduler_port, up.home) == (
        True,
        True,
        19000,
        9004,
        "/tmp/mesh-home",
    )
    assert (up.xds_port, up.agent_port, up.server_name, up.log_level) == (19002, 9005, "mlserver", "info")
    assert down.home == "/tmp/mesh-home"
    assert status.home == "/elsewhere"
