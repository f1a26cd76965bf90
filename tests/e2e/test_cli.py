"""The `meshserve` CLI against the real stack: the happy path and bad input that must change nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from samples import train
from tests.e2e.conftest import Stack, eventually

MESHSERVE = str(Path(sys.executable).parent / "meshserve")
IRIS_JSON = '{"inputs":[{"name":"predict","shape":[1,4],"datatype":"FP32","data":[[1,2,3,4]]}]}'


async def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        MESHSERVE,
        "--scheduler-host", stack.scheduler_address,
        "--inference-host", f"127.0.0.1:{stack.config.http_port}",
        *args,
    ]  # fmt: skip
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120)


def manifest(tmp_path: Path, body: str) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(body)
    return str(path)


def model_yaml(name: str, uri: str, kind: str = "Model") -> str:
    return (
        f"apiVersion: mlops.seldon.io/v1alpha1\nkind: {kind}\nmetadata:\n  name: {name}\n"
        f"spec:\n  storageUri: {uri}\n  requirements: [sklearn]\n  memory: 100Ki\n"
    )


async def test_cli_load_status_infer_unload(stack: Stack, tmp_path: Path) -> None:
    iris_dir = train.ARTIFACTS / "iris"
    path = manifest(tmp_path, model_yaml("cli-iris", str(iris_dir)))
    load = await cli(stack, "model", "load", "-f", path)
    assert (load.returncode, load.stdout.strip()) == (0, "{}"), load.stderr
    wait = await cli(stack, "model", "status", "cli-iris", "-w", "ModelAvailable", "--wait-timeout", "60")
    assert wait.returncode == 0, wait.stderr

    status = json.loads((await cli(stack, "model", "status", "cli-iris")).stdout)
    assert status["versions"][0]["state"]["state"] == "ModelAvailable"
    assert status["versions"][0]["serverName"] == "mlserver"

    rest = await cli(stack, "model", "infer", "cli-iris", IRIS_JSON)
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["model_name"] == "cli-iris_1"
    grpc_call = await cli(stack, "model", "infer", "cli-iris", "--inference-mode", "grpc", IRIS_JSON)
    assert grpc_call.returncode == 0, grpc_call.stderr
    assert json.loads(grpc_call.stdout)["modelName"] == "cli-iris_1"
    counted = await cli(stack, "model", "infer", "cli-iris", "-i", "5", IRIS_JSON)
    assert counted.stdout.strip() == "Success: map[:cli-iris_1::5]"
    headers = await cli(stack, "model", "infer", "cli-iris", "--show-headers", IRIS_JSON)
    assert "x-seldon-route: :cli-iris_1:" in headers.stderr.lower()

    metadata = await cli(stack, "model", "metadata", "cli-iris")
    assert metadata.returncode == 0, metadata.stderr
    assert json.loads(metadata.stdout)["name"] == "cli-iris_1"

    servers = json.loads((await cli(stack, "server", "list", "-o", "json")).stdout)
    assert servers[0]["serverName"] == "mlserver"
    assert (await cli(stack, "scheduler", "status")).returncode == 0

    unload = await cli(stack, "model", "unload", "cli-iris")
    assert (unload.returncode, unload.stdout.strip()) == (0, "{}")
    await stack.wait_gone("cli-iris")
    gone = await cli(stack, "model", "infer", "cli-iris", IRIS_JSON)
    assert gone.returncode == 1 and "404" in gone.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (model_yaml("../x", "/tmp"), "invalid"),
        (model_yaml("Upper", "/tmp"), "invalid"),
        (model_yaml("a" * 300, "/tmp"), "300"),
        (model_yaml("no-uri", "/tmp").replace("  storageUri: /tmp\n", ""), "storageUri is missing"),
        (model_yaml("wrong-kind", "/tmp", kind="Pipeline"), "kind"),
        ("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: [broken\n", "YAML"),
        (model_yaml("missing-artifact", "./no/such/folder"), "does not exist"),
    ],
    ids=[
        "traversal",
        "upper-case",
        "too-long",
        "no-storage-uri",
        "wrong-kind",
        "broken-yaml",
        "missing-path",
    ],
)
async def test_cli_rejects_bad_manifests_and_changes_nothing(
    stack: Stack, tmp_path: Path, body: str, message: str
) -> None:
    before = (await cli(stack, "model", "list", "-o", "json")).stdout
    result = await cli(stack, "model", "load", "-f", manifest(tmp_path, body))
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and message in result.stderr, result.stderr
    assert (await cli(stack, "model", "list", "-o", "json")).stdout == before


async def test_cli_errors_for_unknown_model_and_bad_name(stack: Stack) -> None:
    missing = await cli(stack, "model", "unload", "never-there")
    assert missing.returncode == 1 and "not found" in missing.stderr
    bad = await cli(stack, "model", "status", "../etc")
    assert bad.returncode == 1 and "invalid" in bad.stderr


async def test_scenario_49_agent_metrics_count_every_cli_inference(stack: Stack, tmp_path: Path) -> None:
    """Scenario 49: `model infer -i 50` (REST) and `-i 100` (gRPC) through Envoy show up as exactly 50
    and 100 in the agent's `seldon_model_infer_total`, with the reference's labels."""
    from prometheus_client.parser import text_string_to_metric_families

    name = "metrics49"
    path = manifest(tmp_path, model_yaml(name, str(train.ARTIFACTS / "iris")))
    assert (await cli(stack, "model", "load", "-f", path)).returncode == 0
    try:
        wait = await cli(stack, "model", "status", name, "-w", "ModelAvailable", "--wait-timeout", "60")
        assert wait.returncode == 0, wait.stderr
        rest = await cli(stack, "model", "infer", name, "-i", "50", IRIS_JSON)
        assert rest.returncode == 0, rest.stderr
        grpc_calls = await cli(stack, "model", "infer", name, "--inference-mode=grpc", "-i", "100", IRIS_JSON)
        assert grpc_calls.returncode == 0, grpc_calls.stderr
        labels = {"model": name, "model_internal": f"{name}_1", "server": "mlserver", "server_replica": "0"}
        url = f"http://127.0.0.1:{stack.config.agent_metrics_port}/metrics"

        async def counts() -> dict[tuple[str, str], float]:
            async with stack.http.get(url) as response:
                text = await response.text()
            return {
                (s.labels["method_type"], s.labels["code"]): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "seldon_model_infer_total" and labels.items() <= s.labels.items()
            }

        async def counted() -> bool:
            return await counts() == {("rest", "200"): 50.0, ("grpc", "OK"): 100.0}

        await eventually(counted, timeout=30, what="50 REST and 100 gRPC inferences in the agent's metrics")
    finally:
        await cli(stack, "model", "unload", name)
        await stack.wait_gone(name, timeout=60)
