"""Every bound of apis/limits.py, enforced exactly: at the limit passes, one past it is refused.

Issue 8, item 2: names are matched in full (``"iris\\n"`` is refused), numbers, lengths and the
resource's serialized size have upper bounds, and the manifest parser turns every bad value into
its own error type (never a stray ValueError from protobuf or the YAML constructor).
"""

from __future__ import annotations

import pytest

from apis import limits, manifests
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import (
    InvalidResource,
    validate_capability,
    validate_model,
    validate_name,
    validate_server,
)
from tests.scheduler.fakes import model

MIB = 1024 * 1024


def _server(**fields: object) -> scheduler_pb2.ServerNotify:
    notify = scheduler_pb2.ServerNotify(name="mlserver", expectedReplicas=1)
    for key, value in fields.items():
        setattr(notify, key, value)
    return notify


# -- names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "iris\n",
        "iris\r\n",
        "\niris",
        "iris\x00",
        " iris",
        "iris ",
        "iris\t",
        "\u0131ris",  # dotless i
        "\u0456ris",  # Cyrillic i
        "ir\u0456s",
        "\uff49\uff52\uff49\uff53",  # full-width letters
        "iris\u200b",  # zero-width space
        "iris\u00a0",  # no-break space
        "iri\u0073\u0307",  # s + combining dot above
        "٣iris",  # Arabic-Indic digit three
        "iris_1",
        "IRIS",
        "",
        "x" * (limits.MAX_NAME_LENGTH + 1),
        "x" * 10_000,
    ],
)
def test_names_are_matched_in_full_and_in_ascii(name: str) -> None:
    with pytest.raises(InvalidResource):
        validate_name(name)
    with pytest.raises(InvalidResource):
        validate_model(model(name))
    with pytest.raises(InvalidResource):
        validate_server(_server(name=name))


def test_a_name_at_the_length_limit_passes() -> None:
    assert validate_name("x" * limits.MAX_NAME_LENGTH)


def test_long_names_are_cut_short_in_the_message() -> None:
    with pytest.raises(InvalidResource) as error:
        validate_name("x" + "_" * 60)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("name", ["iris\n", "Iris", "a_b"])
def test_referenced_names_are_matched_in_full(name: str) -> None:
    pinned = model("iris", server=name)
    with pytest.raises(InvalidResource, match="server name"):
        validate_model(pinned)
    explainer = model("iris")
    explainer.modelSpec.explainer.type = "anchor_tabular"
    explainer.modelSpec.explainer.modelRef = name
    with pytest.raises(InvalidResource, match="modelRef"):
        validate_model(explainer)
    llm = model("iris")
    llm.modelSpec.llm.pipelineRef = name
    with pytest.raises(InvalidResource, match="pipelineRef"):
        validate_model(llm)


# -- capabilities ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["skl\u00e9arn", "sk learn", "", "-sklearn", "sklearn\x00", "x" * 129])
def test_bad_capabilities_are_refused(tag: str) -> None:
    with pytest.raises(InvalidResource):
        validate_capability(tag)
    with pytest.raises(InvalidResource):
        validate_model(model("iris", requirements=(tag,)))


def test_a_requirement_in_a_model_must_be_exact() -> None:
    # An item of a comma-separated list is stripped; a model's requirement is taken as it is.
    assert validate_capability("sklearn\n") == "sklearn"
    with pytest.raises(InvalidResource, match="surrounding blanks"):
        validate_model(model("iris", requirements=("sklearn\n",)))


def test_requirement_count_is_bounded() -> None:
    validate_model(model("iris", requirements=tuple(f"c{i}" for i in range(limits.MAX_REQUIREMENTS))))
    with pytest.raises(InvalidResource, match=f"requirements has {limits.MAX_REQUIREMENTS + 1} entries"):
        validate_model(model("iris", requirements=tuple(f"c{i}" for i in range(limits.MAX_REQUIREMENTS + 1))))


# -- numbers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["replicas", "minReplicas", "maxReplicas"])
def test_model_replica_counts_are_bounded(field: str) -> None:
    at_limit = model("iris", replicas=limits.MAX_REPLICAS)
    setattr(at_limit.deploymentSpec, field, limits.MAX_REPLICAS)
    validate_model(at_limit)
    for value in (limits.MAX_REPLICAS + 1, 2**31, 2**32 - 1):
        over = model("iris", replicas=1)
        setattr(over.deploymentSpec, field, value)
        with pytest.raises(InvalidResource, match=f"{field} \\({value}\\) is above the limit"):
            validate_model(over)


@pytest.mark.parametrize("field", ["expectedReplicas", "minReplicas", "maxReplicas"])
def test_server_replica_counts_are_bounded(field: str) -> None:
    at_limit = _server(expectedReplicas=limits.MAX_REPLICAS, maxReplicas=limits.MAX_REPLICAS)
    validate_server(at_limit)
    for value in (limits.MAX_REPLICAS + 1, 2**31, 2**32 - 1):
        over = _server(expectedReplicas=0)
        setattr(over, field, value)
        shown = "replicas" if field == "expectedReplicas" else field
        with pytest.raises(InvalidResource, match=f"{shown} \\({value}\\) is above the limit"):
            validate_server(over)


def test_memory_is_bounded() -> None:
    validate_model(model("iris", memory=limits.MAX_MEMORY_BYTES))
    with pytest.raises(InvalidResource, match="memory"):
        validate_model(model("iris", memory=limits.MAX_MEMORY_BYTES + 1))
    with pytest.raises(InvalidResource, match="memory"):
        validate_model(model("iris", memory=2**64 - 1))


def test_generation_is_bounded() -> None:
    ok = model("iris")
    ok.meta.kubernetesMeta.generation = limits.MAX_GENERATION
    validate_model(ok)
    for value in (-1, limits.MAX_GENERATION + 1, 2**63 - 1):
        bad = model("iris")
        bad.meta.kubernetesMeta.generation = value
        with pytest.raises(InvalidResource, match="generation"):
            validate_model(bad)


def test_parallel_workers_are_bounded() -> None:
    bad = model("iris")
    bad.modelSpec.modelRuntimeInfo.mlserver.parallelWorkers = limits.MAX_PARALLEL_WORKERS + 1
    with pytest.raises(InvalidResource, match="parallelWorkers"):
        validate_model(bad)


# -- lengths and sizes -------------------------------------------------------------------------------


def test_storage_uri_length_is_bounded() -> None:
    prefix = "gs://bucket/"
    validate_model(model("iris", uri=prefix + "x" * (limits.MAX_URI_LENGTH - len(prefix))))
    with pytest.raises(InvalidResource, match=f"storageUri is {limits.MAX_URI_LENGTH + 1} characters"):
        validate_model(model("iris", uri=prefix + "x" * (limits.MAX_URI_LENGTH + 1 - len(prefix))))


@pytest.mark.parametrize("uri", ["gs://a\nb", "gs://a\rb", "gs://a\x1bb", "gs://a\x7fb"])
def test_storage_uri_without_control_characters(uri: str) -> None:
    with pytest.raises(InvalidResource, match="control character"):
        validate_model(model("iris", uri=uri))


def test_parameter_count_and_names_are_bounded() -> None:
    ok = model("iris")
    ok.modelSpec.parameters.extend(
        scheduler_pb2.ParameterSpec(name=f"p{i}", value="v") for i in range(limits.MAX_PARAMETERS)
    )
    validate_model(ok)
    ok.modelSpec.parameters.append(scheduler_pb2.ParameterSpec(name="one-too-many", value="v"))
    with pytest.raises(InvalidResource, match="parameters has"):
        validate_model(ok)
    for name, message in (("", "has no name"), ("a\nb", "control"), ("n" * 257, "characters long")):
        bad = model("iris")
        bad.modelSpec.parameters.append(scheduler_pb2.ParameterSpec(name=name, value="v"))
        with pytest.raises(InvalidResource, match=message):
            validate_model(bad)


def test_resource_size_is_bounded() -> None:
    def with_value(size: int) -> scheduler_pb2.Model:
        built = model("iris")
        built.modelSpec.parameters.append(scheduler_pb2.ParameterSpec(name="blob", value="x" * size))
        return built

    fits = with_value(limits.MAX_RESOURCE_BYTES - 200)
    assert fits.ByteSize() <= limits.MAX_RESOURCE_BYTES
    validate_model(fits)
    for size in (limits.MAX_RESOURCE_BYTES, 5 * MIB):
        with pytest.raises(InvalidResource, match=r"bytes serialized; the limit is 1048576 bytes"):
            validate_model(with_value(size))


def test_a_resource_at_the_size_limit_fits_any_control_plane_message() -> None:
    assert limits.MAX_MESSAGE_BYTES >= 4 * limits.MAX_RESOURCE_BYTES
    assert limits.GRPC_RECEIVE_LIMIT == ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES)


def test_a_server_declaration_is_bounded_too() -> None:
    bad = _server()
    bad.kubernetesMeta.generation = -5
    with pytest.raises(InvalidResource, match="generation"):
        validate_server(bad)
    bad = _server()
    bad.kubernetesMeta.namespace = "Bad\n"
    with pytest.raises(InvalidResource, match="namespace"):
        validate_server(bad)


# -- manifests ---------------------------------------------------------------------------------------


def _model_yaml(spec: str, name: str = "iris", metadata: str = "") -> str:
    return (
        "apiVersion: mlops.seldon.io/v1alpha1\nkind: Model\n"
        f"metadata:\n  name: {name}\n{metadata}"
        f"spec:\n  storageUri: gs://models/iris\n{spec}"
    )


def _parse(text: str) -> list[scheduler_pb2.LoadModelRequest]:
    return manifests.parse_model_requests(text, source="m.yaml", base_dir="/nonexistent")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_model_yaml("", name='"iris\\n"'), "DNS-1123"),
        (_model_yaml("", name='"\u0456ris"'), "DNS-1123"),
        (_model_yaml("  replicas: 1001\n"), "replicas \\(1001\\) is above the limit of 1000"),
        (_model_yaml("  replicas: 2147483648\n"), "above the limit"),
        (_model_yaml("  replicas: 4294967296\n"), "non-negative integer"),
        (_model_yaml("  maxReplicas: 5000\n"), "maxReplicas"),
        (_model_yaml("  memory: 2Ei\n"), "memory"),
        (_model_yaml("  memory: 99999999999999999999999Ei\n"), "too large"),
        (_model_yaml("  requirements: [" + ", ".join(["a"] * 65) + "]\n"), "spec.requirements has 65"),
        (_model_yaml("  requirements: ['sk learn']\n"), "capability"),
        (_model_yaml("", metadata="  generation: 9223372036854775808\n"), "generation"),
        (_model_yaml("", metadata="  generation: 2147483648\n"), "generation"),
        (_model_yaml('  parameters: [{name: "\\ud800", value: x}]\n'), "not valid text"),
        (_model_yaml("  parameters: [{name: a, value: 2001-13-01}]\n"), "invalid YAML value"),
        (_model_yaml("  replicas: " + "9" * 5000 + "\n"), "invalid YAML value"),
        ("[" * 5000 + "]" * 5000, "nested too deeply|invalid YAML"),
        (_model_yaml("  parameters: [{name: blob, value: '" + "x" * (5 * MIB) + "'}]\n"), "bytes serialized"),
    ],
)
def test_bad_manifests_are_manifest_errors(text: str, message: str) -> None:
    with pytest.raises(manifests.ManifestFileError, match=message):
        _parse(text)


def test_manifest_requirements_are_stripped_tags() -> None:
    (request,) = _parse(_model_yaml("  requirements: [' sklearn ']\n"))
    assert list(request.model.modelSpec.requirements) == ["sklearn"]


def test_server_manifest_bounds() -> None:
    document = {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": "mlserver"},
        "spec": {"replicas": limits.MAX_REPLICAS + 1},
    }
    with pytest.raises(InvalidResource, match="above the limit"):
        manifests.server_manifest(document)
    document["spec"] = {"replicas": 1, "extraCapabilities": [f"c{i}" for i in range(100)]}
    with pytest.raises(manifests.ManifestError, match="limit"):
        manifests.server_manifest(document)
