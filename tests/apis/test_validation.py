from __future__ import annotations

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource, validate_capability, validate_model, validate_name
from tests.scheduler.fakes import model


@pytest.mark.parametrize("name", ["iris", "a", "iris-2", "0model", "x" * 63])
def test_dns_1123_labels_are_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "model name is empty"),
        ("x" * 64, "64 characters long; the limit is 63"),
        ("Iris", "DNS-1123"),
        ("iris_1", "DNS-1123"),
        ("-iris", "DNS-1123"),
        ("iris-", "DNS-1123"),
        ("a.b", "DNS-1123"),
    ],
)
def test_invalid_names_say_what_is_wrong(name: str, message: str) -> None:
    with pytest.raises(InvalidResource, match=message):
        validate_name(name)


def test_name_errors_mention_the_kind() -> None:
    with pytest.raises(InvalidResource, match="server name"):
        validate_name("", kind="server")


def test_capabilities_are_stripped_tags() -> None:
    assert validate_capability(" mlserver-1.3.4 ") == "mlserver-1.3.4"
    with pytest.raises(InvalidResource, match="capability"):
        validate_capability("has space")


def test_valid_model_passes() -> None:
    validate_model(model("iris", replicas=2, min_replicas=1, server="mlserver"))


def test_model_needs_a_storage_uri() -> None:
    with pytest.raises(InvalidResource, match="no storageUri"):
        validate_model(model("iris", uri=""))


def test_storage_uri_must_not_contain_nul() -> None:
    with pytest.raises(InvalidResource, match="NUL"):
        validate_model(model("iris", uri="gs://a\x00b"))


def test_bad_requirement_is_rejected() -> None:
    with pytest.raises(InvalidResource, match="capability"):
        validate_model(model("iris", requirements=("gpu!",)))


def test_pinned_server_name_is_validated() -> None:
    with pytest.raises(InvalidResource, match="server name"):
        validate_model(model("iris", server="Bad_Server"))


def test_replica_bounds_must_be_consistent() -> None:
    too_many = model("iris", replicas=3)
    too_many.deploymentSpec.maxReplicas = 2
    with pytest.raises(InvalidResource, match=r"maxReplicas \(2\) is below replicas \(3\)"):
        validate_model(too_many)
    with pytest.raises(InvalidResource, match=r"replicas \(1\) is below minReplicas \(2\)"):
        validate_model(model("iris", replicas=1, min_replicas=2))


def test_model_name_is_validated_first() -> None:
    nameless = scheduler_pb2.Model(modelSpec=scheduler_pb2.ModelSpec(uri="gs://x"))
    with pytest.raises(InvalidResource, match="model name is empty"):
        validate_model(nameless)
