from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from apis.mlops.scheduler import scheduler_pb2
from stack.demo import DEMO_MODEL, DemoError, load_models
from tests.cli.cli_fakes import FakeScheduler, model_status


async def test_demo_model_is_loaded_and_awaited_without_the_cli(fake_scheduler: FakeScheduler) -> None:
    fake_scheduler.models["iris"] = [
        model_status("iris", "ModelProgressing"),
        model_status("iris", "ModelAvailable"),
    ]
    assert await load_models(fake_scheduler.address) == ["iris"]
    (load,) = fake_scheduler.of_type(scheduler_pb2.LoadModelRequest)
    assert load.model.meta.name == "iris"
    # The sample's relative storageUri is resolved against the YAML file's folder, as the CLI does.
    assert load.model.modelSpec.uri == f"file://{DEMO_MODEL.parent / 'artifacts' / 'iris'}"
    assert len(fake_scheduler.of_type(scheduler_pb2.ModelStatusRequest)) == 2


async def test_a_model_never_available_times_out(fake_scheduler: FakeScheduler) -> None:
    fake_scheduler.models["iris"] = [model_status("iris", "ScheduleFailed")]
    with pytest.raises(DemoError, match=r"iris not available within 0\.5 s"):
        await load_models(fake_scheduler.address, wait_timeout=0.5)


async def test_a_refused_load_names_the_scheduler_and_code(fake_scheduler: FakeScheduler) -> None:
    fake_scheduler.load_error = (grpc.StatusCode.INVALID_ARGUMENT, "no")
    with pytest.raises(DemoError, match=f"scheduler at {fake_scheduler.address}: INVALID_ARGUMENT: no"):
        await load_models(fake_scheduler.address)


async def test_a_bad_manifest_is_reported_before_anything_is_sent(
    fake_scheduler: FakeScheduler, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text("apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\nmetadata: {name: x}\nspec: {}\n")
    with pytest.raises(DemoError, match=r"bad\.yaml: document 1: spec\.storageUri is missing"):
        await load_models(fake_scheduler.address, manifest)
    assert fake_scheduler.requests == []
