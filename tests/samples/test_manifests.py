"""The samples fit together: every sample Pipeline passes the CLI's own parser (what ``meshserve
pipeline load -f`` runs before sending anything), every model a sample pipeline calls has a sample
Model YAML, and every sample Model's artifact names an importable MLModel runtime."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

from apis import manifests
from cli.resources import read_model_requests, read_pipeline_requests

SAMPLES = Path(__file__).parents[2] / "samples"
PIPELINES = sorted((SAMPLES / "pipelines").glob("*.yaml"))
RUNTIME_MODELS = sorted(
    path
    for path in (SAMPLES / "models").glob("*.yaml")
    if "/runtimes/" in manifests.read_model_requests(str(path))[0].model.modelSpec.uri
)


@pytest.mark.parametrize("sample", PIPELINES, ids=lambda p: p.name)
def test_every_sample_pipeline_passes_the_cli_parser(sample: Path) -> None:
    requests = read_pipeline_requests(str(sample))
    assert requests and all(r.pipeline.steps and r.pipeline.output.steps for r in requests)


def test_every_step_model_has_a_sample_model_yaml() -> None:
    steps = {
        step.name
        for sample in PIPELINES
        for r in read_pipeline_requests(str(sample))
        for step in r.pipeline.steps
    }
    models = {
        r.model.meta.name: path.stem
        for path in (SAMPLES / "models").glob("*.yaml")
        for r in read_model_requests(str(path))
    }
    assert steps <= set(models), sorted(steps - set(models))
    assert all(name == stem for name, stem in models.items())  # the file is named after its model


def test_the_runtime_samples_are_the_reference_models() -> None:
    assert sorted(path.stem for path in RUNTIME_MODELS) == sorted(
        ["add10", "choice-is-one", "choice-is-two", "conditional", "counter", "drift", "identity-loop",
         "identity-output", "mul10", "mul10-explainer", "tfsimple1", "tfsimple2", "tfsimple3"]
    )  # fmt: skip


@pytest.mark.parametrize("sample", RUNTIME_MODELS, ids=lambda p: p.stem)
def test_every_runtime_artifact_names_an_mlmodel(sample: Path) -> None:
    [request] = read_model_requests(str(sample))
    spec = request.model.modelSpec
    assert list(spec.requirements) == ["mlserver", "python"]
    folder = Path(spec.uri.removeprefix("file://"))
    assert folder.is_relative_to(SAMPLES / "models" / "runtimes")
    settings = json.loads((folder / "model-settings.json").read_text())
    module, _, name = settings["implementation"].rpartition(".")
    assert module.startswith("samples.runtimes.")
    # Read, not imported: MLServer cannot be imported beside the project's protos (test_runtimes.py).
    found = importlib.util.find_spec(module)
    assert found is not None and found.origin is not None
    classes = {
        node.name: node
        for node in ast.parse(Path(found.origin).read_text()).body
        if isinstance(node, ast.ClassDef)
    }
    assert [ast.unparse(base) for base in classes[name].bases] == ["Ready"]  # serving.Ready, an MLModel
