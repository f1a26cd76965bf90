"""``pipeline load|unload|status|list`` against the real scheduler served in-process (SchedulerApp),
with a fake dataflow engine answering over the Chainer service for ``status -w``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import structlog

from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from scheduler.app import SchedulerApp
from tests.cli.cli_fakes import invoke
from tests.scheduler.test_pipeline_api import config

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "pipelines"
CHAIN_YAML = (SAMPLES / "chain.yaml").read_text()
SINGLE_YAML = (SAMPLES / "tfsimple.yaml").read_text()
BAD_REFERENCE_YAML = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata:
  name: broken
spec:
  steps:
  - name: a
  - name: b
    inputs: [c.outputs]
"""


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[SchedulerApp]:
    with structlog.testing.capture_logs():  # the scheduler's logs are not the command's output
        built = SchedulerApp(config(tmp_path / "state"))
        await built.start()
        try:
            yield built
        finally:
            await built.stop(grace=0)


def host(app: SchedulerApp) -> tuple[str, str]:
    return ("--scheduler-host", f"127.0.0.1:{app.config.scheduler_port}")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return str(path)


async def test_load_status_list_unload(
    app: SchedulerApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CHAIN_YAML + "---\n" + SINGLE_YAML)
    assert await invoke(*host(app), "pipeline", "load", "-f", path) == 0
    assert capsys.readouterr().out.split() == ["{}", "{}"]

    assert await invoke(*host(app), "pipeline", "status", "tfsimples") == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"pipelineName", "versions", "operation"}
    [version] = shown["versions"]
    assert version["pipeline"]["steps"] == [
        {"name": "tfsimple1"},
        {
            "name": "tfsimple2",
            "inputs": ["tfsimple1.outputs"],
            "tensorMap": {"tfsimple1.outputs.OUTPUT0": "INPUT0", "tfsimple1.outputs.OUTPUT1": "INPUT1"},
        },
    ]
    assert version["pipeline"]["output"] == {"steps": ["tfsimple2.outputs"]}
    assert version["state"]["status"] == "PipelineCreate"
    assert "modelsReady" not in version["state"]  # false is left out, as the reference shows it (§8.1)

    assert await invoke(*host(app), "pipeline", "list") == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["tfsimple", "1", "PipelineCreate"], ["tfsimples", "1", "PipelineCreate"]]
    assert await invoke(*host(app), "pipeline", "list", "-o", "json") == 0
    assert [p["pipelineName"] for p in json.loads(capsys.readouterr().out)] == ["tfsimple", "tfsimples"]

    assert await invoke(*host(app), "pipeline", "unload", "tfsimples") == 0
    assert capsys.readouterr().out.strip() == "{}"
    assert await invoke(*host(app), "pipeline", "status", "tfsimples", "-o", "table") == 0
    assert "PipelineTerminated" in capsys.readouterr().out
    assert await invoke(*host(app), "pipeline", "unload", "tfsimples") == 1
    assert "unloaded already" in capsys.readouterr().err


async def test_a_changed_file_makes_a_new_version_and_all_versions_shows_both(
    app: SchedulerApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, SINGLE_YAML)
    assert await invoke(*host(app), "pipeline", "load", "-f", path) == 0
    assert await invoke(*host(app), "pipeline", "load", "-f", path) == 0  # unchanged: same version
    write(
        tmp_path,
        SINGLE_YAML.replace(
            "  - name: tfsimple1\n  output", "  - name: tfsimple1\n    joinWindowMs: 5\n  output"
        ),
    )
    assert await invoke(*host(app), "pipeline", "load", "-f", path) == 0
    capsys.readouterr()
    assert await invoke(*host(app), "pipeline", "status", "tfsimple", "-a") == 0
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert [v["state"]["pipelineVersion"] for v in versions] == [1, 2]
    assert versions[1]["pipeline"]["steps"] == [{"name": "tfsimple1", "joinWindowMs": 5}]


async def test_bad_files_and_names_fail_with_a_message_and_send_nothing(
    app: SchedulerApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_then_bad = write(tmp_path, SINGLE_YAML + "---\n" + BAD_REFERENCE_YAML)
    assert await invoke(*host(app), "pipeline", "load", "-f", good_then_bad) == 1
    err = capsys.readouterr().err
    assert "names step c, which the pipeline does not have" in err and "pipeline.yaml" in err
    assert app.pipelines.records == {}, "nothing is sent when one document is wrong"

    assert await invoke(*host(app), "pipeline", "load", "-f", str(tmp_path / "missing.yaml")) == 1
    assert "missing.yaml" in capsys.readouterr().err
    assert await invoke(*host(app), "pipeline", "status", "nope") == 1
    assert "pipeline 'nope' not found" in capsys.readouterr().err
    assert await invoke(*host(app), "pipeline", "unload", "nope") == 1
    assert "pipeline nope not found" in capsys.readouterr().err
    assert await invoke(*host(app), "pipeline", "status", "Bad_Name") == 1
    assert "Bad_Name" in capsys.readouterr().err


async def test_status_wait_returns_once_an_engine_runs_it_and_times_out_naming_the_state(
    app: SchedulerApp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await invoke(*host(app), "pipeline", "load", "-f", write(tmp_path, SINGLE_YAML)) == 0
    capsys.readouterr()
    assert await invoke(*host(app), "pipeline", "status", "tfsimple", "-w", "--wait-timeout", "0.5") == 1
    err = capsys.readouterr().err
    assert "is not PipelineReady after 0.5s: version 1 is PipelineCreate" in err
    assert "waiting for a dataflow engine to subscribe" in err

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.config.scheduler_port}") as channel:
        chainer = chainer_pb2_grpc.ChainerStub(channel)
        engine = chainer.SubscribePipelineUpdates(chainer_pb2.PipelineSubscriptionRequest(name="engine-0"))

        async def run_engine() -> None:
            async for update in engine:
                await chainer.PipelineUpdateEvent(
                    chainer_pb2.PipelineUpdateStatusMessage(update=update, success=True), timeout=5
                )

        task = asyncio.create_task(run_engine())
        try:
            code = await invoke(*host(app), "pipeline", "status", "tfsimple", "-w", "PipelineReady")
            assert code == 0
            shown = json.loads(capsys.readouterr().out)
            assert shown["versions"][0]["state"]["status"] == "PipelineReady"
            assert shown["versions"][0]["state"]["reason"] == "created pipeline"
        finally:
            engine.cancel()
            await asyncio.gather(task, return_exceptions=True)
