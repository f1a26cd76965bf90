"""Model manifests to LoadModelRequests: every field, multi-document files and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.quantity import parse_quantity
from cli.errors import CliError
from cli.resources import ManifestError, parse_model_requests, read_model_requests, resolve_storage_uri

HEADER = "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
IRIS = HEADER + "metadata:\n  name: iris\nspec:\n  storageUri: gs://seldon-models/mlserver/iris\n"


def parse(text: str, base_dir: str = "/manifests") -> list[scheduler_pb2.LoadModelRequest]:
    return parse_model_requests(text, source="models.yaml", base_dir=base_dir)


def test_every_field_maps_onto_the_request() -> None:
    text = HEADER + (
        "metadata:\n"
        "  name: income-explainer\n"
        "  namespace: seldon-mesh\n"
        "  generation: 3\n"
        "  labels: {team: ml}\n"
        "spec:\n"
        "  storageUri: s3://models/explainer\n"
        "  requirements: [mlserver, alibi-explain]\n"
        "  memory: 1.5Gi\n"
        "  server: mlserver\n"
        "  artifactVersion: 2\n"
        "  parameters:\n"
        "  - {name: query, value: choice == 1}\n"
        "  - {name: workers, value: 4}\n"
        "  replicas: 2\n"
        "  minReplicas: 1\n"
        "  maxReplicas: 4\n"
        "  logPayloads: true\n"
        "  dataflow: {cleanTopicsOnDelete: true}\n"
        "  explainer: {type: anchor_tabular, modelRef: income}\n"
        "  secretName: minio-secret\n"
    )
    [request] = parse(text)
    model = request.model
    assert model.meta.name == "income-explainer"
    assert model.meta.kubernetesMeta.namespace == "seldon-mesh"
    assert model.meta.kubernetesMeta.generation == 3
    spec = model.modelSpec
    assert spec.uri == "s3://models/explainer"
    assert list(spec.requirements) == ["mlserver", "alibi-explain"]
    assert spec.memoryBytes == 1610612736
    assert spec.server == "mlserver"
    assert spec.artifactVersion == 2
    assert [(p.name, p.value) for p in spec.parameters] == [("query", "choice == 1"), ("workers", "4")]
    assert spec.explainer.type == "anchor_tabular"
    assert spec.explainer.modelRef == "income"
    assert not spec.explainer.HasField("pipelineRef")
    assert spec.storageConfig.storageSecretName == "minio-secret"
    assert model.deploymentSpec.replicas == 2
    assert model.deploymentSpec.minReplicas == 1
    assert model.deploymentSpec.maxReplicas == 4
    assert model.deploymentSpec.logPayloads is True
    assert model.dataflowSpec.cleanTopicsOnDelete is True


def test_minimal_model_defaults_to_one_replica_and_no_optional_fields() -> None:
    [request] = parse(IRIS)
    model = request.model
    assert model.deploymentSpec.replicas == 1
    assert not model.meta.HasField("kubernetesMeta")
    assert not model.modelSpec.HasField("memoryBytes")
    assert not model.modelSpec.HasField("server")
    assert not model.modelSpec.HasField("storageConfig")
    assert model.modelSpec.WhichOneof("model_spec") is None


def test_llm_spec_with_pipeline_ref() -> None:
    [request] = parse(IRIS.replace("name: iris", "name: chat") + "  llm: {pipelineRef: rag}\n")
    assert request.model.modelSpec.WhichOneof("model_spec") == "llm"
    assert request.model.modelSpec.llm.pipelineRef == "rag"


def test_multi_document_file_in_order_skipping_empty_documents() -> None:
    text = IRIS + "---\n" + IRIS.replace("name: iris", "name: iris2") + "---\n"
    requests = parse(text)
    assert [r.model.meta.name for r in requests] == ["iris", "iris2"]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("./artifacts/iris", "file://{base}/manifests/artifacts/iris"),
        ("artifacts/iris", "file://{base}/manifests/artifacts/iris"),
        ("../shared/iris", "file://{base}/shared/iris"),
        ("file://./artifacts/iris", "file://{base}/manifests/artifacts/iris"),
        ("file://artifacts/iris", "file://{base}/manifests/artifacts/iris"),
        ("file:///var/models/iris", "file:///var/models/iris"),
        ("/var/models/iris", "/var/models/iris"),
        ("gs://seldon-models/mlserver/iris", "gs://seldon-models/mlserver/iris"),
        ("s3:bucket/iris", "s3:bucket/iris"),
    ],
)
def test_storage_uri_resolution(uri: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "manifests" / "artifacts" / "iris").mkdir(parents=True)
    (tmp_path / "shared" / "iris").mkdir(parents=True)
    base = str(tmp_path / "manifests")
    assert resolve_storage_uri(uri, base) == expected.format(base=tmp_path)


def test_missing_relative_artifact_is_rejected_before_sending(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        resolve_storage_uri("./artifacts/missing", str(tmp_path))


def test_relative_uri_resolves_against_the_yaml_files_folder(tmp_path: Path) -> None:
    manifest = tmp_path / "samples" / "iris.yaml"
    (manifest.parent / "artifacts" / "iris").mkdir(parents=True)
    manifest.write_text(IRIS.replace("gs://seldon-models/mlserver/iris", "./artifacts/iris"))
    [request] = read_model_requests(str(manifest))
    assert request.model.modelSpec.uri == f"file://{tmp_path}/samples/artifacts/iris"


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        (500, 500),
        ("500", 500),
        ("100Ki", 102400),
        ("3M", 3_000_000),
        ("1k", 1000),
        ("1.5Gi", 1610612736),
        ("2Ti", 2 * 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("2E", 2 * 10**18),
        ("0.5", 1),
        (1.5, 2),
    ],
)
def test_quantities(quantity: object, expected: int) -> None:
    assert parse_quantity(quantity) == expected


@pytest.mark.parametrize("quantity", ["-1", "1KB", "1K", "1ki", "abc", "", "1.5.3", True, None, [1], "20Ei"])
def test_bad_quantities(quantity: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(quantity)


def _spec(extra: str) -> str:
    return IRIS + extra


@pytest.mark.parametrize(
    ("text", "document", "message"),
    [
        (HEADER.replace("Model", "Pipeline") + "metadata: {name: p}\nspec: {}\n", 1, "kind is 'Pipeline'"),
        (IRIS.replace("v1alpha1", "v1"), 1, "apiVersion is 'mlops.seldon.io/v1'"),
        (IRIS + "---\nkind: Model\nmetadata:\n  name: x\n bad: 1\n", 2, "invalid YAML at line 11"),
        (
            IRIS + "---\n" + HEADER + "metadata: {name: b}\nspec: {replicas: 1}\n",
            2,
            "spec.storageUri is missing",
        ),
        (IRIS.replace("name: iris", "name: ../x"), 1, "invalid"),
        (IRIS.replace("name: iris", "name: Iris"), 1, "invalid"),
        (IRIS.replace("name: iris", "name: " + "a" * 300), 1, "300 characters"),
        (IRIS.replace("name: iris", "name: ''"), 1, "name is empty"),
        ("- just\n- a list\n", 1, "expected a mapping"),
        ("plain text\n", 1, "expected a mapping"),
        (HEADER + "spec: {storageUri: gs://x}\n", 1, "metadata is missing"),
        (HEADER + "metadata: {name: a}\n", 1, "spec is missing"),
        (_spec("  storageuri: gs://typo\n"), 1, "unknown field spec.storageuri"),
        (_spec("  preloaded: true\n"), 1, "unknown field spec.preloaded"),
        (IRIS + "extra: 1\n", 1, "unknown field extra"),
        (_spec("  replicas: -1\n"), 1, "spec.replicas must be a non-negative integer"),
        (_spec("  replicas: two\n"), 1, "spec.replicas must be a non-negative integer"),
        (_spec("  replicas: true\n"), 1, "spec.replicas must be a non-negative integer"),
        (_spec("  replicas: 3\n  maxReplicas: 2\n"), 1, "maxReplicas (2) is below replicas (3)"),
        (_spec("  memory: lots\n"), 1, "spec.memory"),
        (_spec("  requirements: sklearn\n"), 1, "spec.requirements must be a list of strings"),
        (_spec("  requirements: ['bad tag!']\n"), 1, "capability"),
        (_spec("  server: Bad_Server\n"), 1, "server name"),
        (_spec("  logPayloads: yes please\n"), 1, "spec.logPayloads must be true or false"),
        (_spec("  parameters: {a: b}\n"), 1, "spec.parameters must be a list"),
        (_spec("  parameters: [{value: b}]\n"), 1, "spec.parameters[0].name is missing"),
        (_spec("  explainer: {type: anchor_tabular}\n  llm: {modelRef: m}\n"), 1, "cannot both be set"),
        (_spec("  explainer: {type: x, modelRef: a, pipelineRef: b}\n"), 1, "cannot both be set"),
        (_spec("  explainer: {modelRef: a}\n"), 1, "spec.explainer.type is missing"),
        (_spec("  dataflow: {cleanTopics: true}\n"), 1, "unknown field spec.dataflow.cleanTopics"),
        (IRIS + "---\n" + IRIS, 2, "model 'iris' is already defined in document 1"),
        (IRIS.replace("name: iris", "name: iris\n  generation: -2"), 1, "metadata.generation"),
    ],
)
def test_bad_documents_name_the_file_and_document(text: str, document: int, message: str) -> None:
    with pytest.raises(CliError) as caught:
        parse(text)
    assert str(caught.value).startswith(f"models.yaml: document {document}: ")
    assert message in str(caught.value)


def test_file_without_models_is_an_error() -> None:
    with pytest.raises(CliError, match="no Model documents"):
        parse("---\n")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="No such file"):
        read_model_requests(str(tmp_path / "nope.yaml"))
