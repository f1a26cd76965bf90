"""Pipeline YAML (kind: Pipeline) to LoadPipelineRequests: every sample, every field, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from apis import manifests
from apis.mlops.scheduler import scheduler_pb2
from pipelines.model import Pipeline

SAMPLES = Path(__file__).parents[2] / "samples" / "pipelines"
HEAD = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata: {name: p}\n"


def parse(text: str) -> list[scheduler_pb2.LoadPipelineRequest]:
    return manifests.parse_pipeline_requests(text, source="p.yaml", check=Pipeline.from_proto)


@pytest.mark.parametrize("sample", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sample_parses_and_validates(sample: Path) -> None:
    requests = manifests.read_pipeline_requests(str(sample), check=Pipeline.from_proto)
    assert requests and all(r.pipeline.steps for r in requests)


def test_sample_names() -> None:
    names = {
        r.pipeline.name
        for sample in SAMPLES.glob("*.yaml")
        for r in manifests.read_pipeline_requests(str(sample))
    }
    assert names == {
        "tfsimple",
        "tfsimples",
        "tfsimple-drift",
        "join",
        "tfsimple-conditional",
        "trigger-joins",
        "tfsimples-input",
        "pipeline-inputs",
        "tfsimple-extended",
        "tfsimple-extended2",
        "tfsimple-combined",
        "tfsimple-combined-trigger",
        "tfsimple-extended-step",
        "tfsimple-combined-step",
        "counter-pipeline",
        "choice",
        "pipeline-add10",
        "pipeline-mul10",
        "explain-target",
        "explained",
    }


def test_every_field_reaches_the_request() -> None:
    [request] = parse(
        """
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: p, namespace: seldon-mesh, generation: 2}
spec:
  allowCycles: true
  maxStepRevisits: 3
  dataflow: {cleanTopicsOnDelete: true}
  input:
    externalInputs: [q.outputs]
    externalTriggers: [r.step.s.outputs.go]
    joinWindowMs: 10
    joinType: outer
    triggersJoinType: any
    tensorMap: {q.outputs.OUTPUT0: INPUT0}
  steps:
  - name: a
    inputs: [p.inputs.INPUT0, b]
    triggers: [p.inputs.go]
    tensorMap: {p.inputs.INPUT0: X}
    joinWindowMs: 5
    inputsJoinType: any
    triggersJoinType: outer
  - name: b
  - name: c
    batch: {size: 20, windowMs: 100, rolling: false}
  output: {steps: [a], joinWindowMs: 7, stepsJoin: any, tensorMap: {a.outputs.Y: Z}}
"""
    )
    p = request.pipeline
    assert (p.name, p.kubernetesMeta.namespace, p.kubernetesMeta.generation) == ("p", "seldon-mesh", 2)
    assert p.allowCycles and p.maxStepRevisits == 3 and p.dataflowSpec.cleanTopicsOnDelete
    assert list(p.input.externalTriggers) == ["r.step.s.outputs.go"] and p.input.joinWindowMs == 10
    assert (p.input.joinType, p.input.triggersJoin) == (1, 2)
    a, b, c = p.steps
    assert list(a.inputs) == ["p.inputs.INPUT0", "b"] and list(a.triggers) == ["p.inputs.go"]
    assert (a.joinWindowMs, a.inputsJoin, a.triggersJoin) == (5, 2, 1)
    assert dict(a.tensorMap) == {"p.inputs.INPUT0": "X"}
    assert not b.HasField("batch")
    assert (c.batch.size, c.batch.windowMs) == (20, 100) and not c.HasField("joinWindowMs")
    assert (p.output.joinWindowMs, p.output.stepsJoin, dict(p.output.tensorMap)) == (
        7,
        2,
        {"a.outputs.Y": "Z"},
    )


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("spec: {}", "spec.steps is missing"),
        ("spec: {steps: a}", "spec.steps must be a list of steps, got a string"),
        ("spec: {steps: [a]}", "spec.steps[0] must be a mapping with at least a name, got a string"),
        ("spec: {steps: [{inputs: [x]}]}", "spec.steps[0].name is missing"),
        ("spec: {steps: [{name: A}]}", "spec.steps[0].name: step name 'A' is invalid"),
        ("spec: {steps: [{name: a, model: b}]}", "unknown field spec.steps[0].model"),
        (
            "spec: {steps: [{name: a, inputsJoin: any}]}",
            "the resource spells it spec.steps[0].inputsJoinType",
        ),
        ("spec: {steps: [{name: a, inputs: x}]}", "spec.steps[0].inputs must be a list of strings"),
        ("spec: {steps: [{name: a, inputs: [1]}]}", "spec.steps[0].inputs must be a list of strings"),
        ("spec: {steps: [{name: a, tensorMap: [x]}]}", "spec.steps[0].tensorMap must be a mapping"),
        ("spec: {steps: [{name: a, tensorMap: {p.inputs.x: 1}}]}", "keys and values must be strings"),
        ("spec: {steps: [{name: a, inputsJoinType: left}]}", "must be one of inner, outer, any, got 'left'"),
        ("spec: {steps: [{name: a, joinWindowMs: -1}]}", "spec.steps[0].joinWindowMs must be a non-negative"),
        ("spec: {steps: [{name: a, batch: {size: x}}]}", "spec.steps[0].batch.size must be a non-negative"),
        ("spec: {steps: [{name: a, batch: {count: 1}}]}", "unknown field spec.steps[0].batch.count"),
        ("spec: {steps: [{name: a, batch: {rolling: true}}]}", "batch.rolling: true cannot be loaded"),
        ("spec: {steps: [{name: a}], output: [a]}", "spec.output must be a mapping, got a list"),
        ("spec: {steps: [{name: a}], output: {step: [a]}}", "unknown field spec.output.step"),
        ("spec: {steps: [{name: a}], output: {steps: [a], stepsJoin: ANY}}", "spec.output.stepsJoin must be"),
        ("spec: {steps: [{name: a}], input: {externalInput: [q]}}", "unknown field spec.input.externalInput"),
        ("spec: {steps: [{name: a}], input: {triggersJoin: any}}", "spells it spec.input.triggersJoinType"),
        ("spec: {steps: [{name: a}], dataflow: {clean: true}}", "unknown field spec.dataflow.clean"),
        ("spec: {steps: [{name: a}], allowCycles: yes please}", "spec.allowCycles must be true or false"),
        ("spec: {steps: [{name: a}], maxStepRevisits: 1.5}", "spec.maxStepRevisits must be a non-negative"),
        ("spec: {steps: [{name: a}], replicas: 2}", "unknown field spec.replicas"),
        ("spec: {steps: [{name: b, inputs: [c]}]}", "names step c, which the pipeline does not have"),
    ],
)
def test_bad_manifests_name_the_document_and_field(spec: str, says: str) -> None:
    with pytest.raises(manifests.ManifestFileError, match=r"^p\.yaml: document 1: ") as caught:
        parse(HEAD + spec)
    assert says in str(caught.value)


def test_a_file_is_checked_whole_before_anything_is_used() -> None:
    good = HEAD + "spec: {steps: [{name: a}]}\n"
    with pytest.raises(manifests.ManifestFileError, match="document 2: pipeline 'p' is already defined"):
        parse(good + "---\n" + good)
    with pytest.raises(manifests.ManifestFileError, match="no Pipeline documents found"):
        parse("---\n")
    with pytest.raises(manifests.ManifestFileError, match="kind is 'Model'; 'pipeline load' takes kind"):
        parse(good.replace("kind: Pipeline", "kind: Model"))
    assert len(parse(good + "---\n" + good.replace("name: p", "name: q"))) == 2


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(manifests.ManifestFileError, match=r"missing\.yaml"):
        manifests.read_pipeline_requests(str(tmp_path / "missing.yaml"))


def test_income_production_status_is_normalised_as_the_reference() -> None:
    """seldon-pipelines.md §13 scenario 38: steps sorted by name, bare references made ``.outputs``,
    tensor references kept, the batched drift step carried as it was given."""
    [request] = parse(
        """
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: income-production}
spec:
  steps:
  - name: income
  - name: income-preprocess
  - name: income-outlier
    inputs: [income-preprocess]
  - name: income-drift
    batch: {size: 20}
  output:
    steps: [income, income-outlier.outputs.is_outlier]
"""
    )
    status = Pipeline.from_proto(request.pipeline).to_proto()
    assert [s.name for s in status.steps] == ["income", "income-drift", "income-outlier", "income-preprocess"]
    by_name = {s.name: s for s in status.steps}
    assert list(by_name["income-outlier"].inputs) == ["income-preprocess.outputs"]
    assert by_name["income-drift"].batch.size == 20
    assert list(status.output.steps) == ["income.outputs", "income-outlier.outputs.is_outlier"]
