"""A Server's replica memory and overcommit from its podSpec (apis/manifests/pod_spec.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from apis.limits import MAX_MEMORY_BYTES
from apis.manifests import ManifestError
from apis.manifests.server import server_manifest
from apis.quantity import parse_memory
from apis.validation import parse_overcommit_percent


def server(pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.seldon.io/v1alpha1",
        "kind": "Server",
        "metadata": {"name": "small"},
        "spec": {"serverConfig": "mlserver", "podSpec": pod_spec},
    }


SELDON_STYLE = yaml.safe_load(
    """
containers:
  - name: rclone
    volumeMounts: [{name: models, mountPath: /var/models}]
  - name: agent
    env:
      - {name: SELDON_LOG_LEVEL, value: debug}
      - {name: SELDON_OVERCOMMIT_PERCENTAGE, value: "20"}
  - name: mlserver
    image: seldonio/mlserver:1.7.1
    resources:
      requests: {memory: 10Mi, cpu: 100m}
      limits: {memory: 1Gi}
nodeSelector: {pool: models}
"""
)


def test_memory_and_overcommit_come_from_their_containers() -> None:
    resources = server_manifest(server(SELDON_STYLE)).resources
    assert resources.memory_bytes == 10 * 2**20
    assert resources.overcommit_percent == 20


@pytest.mark.parametrize(
    "pod_spec",
    [None, {}, {"containers": []}, {"containers": [{"name": "mlserver", "image": "x"}, {"name": "agent"}]}],
)
def test_what_is_not_declared_is_left_to_the_stack(pod_spec: Any) -> None:
    resources = server_manifest(server(pod_spec)).resources
    assert resources.memory_bytes is None and resources.overcommit_percent is None


@pytest.mark.parametrize(
    ("pod_spec", "message"),
    [
        (
            {"containers": [{"name": "mlserver", "resources": {"requests": {"memory": "-1Gi"}}}]},
            "not a quantity",
        ),
        (
            {"containers": [{"name": "mlserver", "resources": {"requests": {"memory": "lots"}}}]},
            "not a quantity",
        ),
        ({"containers": [{"name": "mlserver", "resources": {"requests": {"memory": 0}}}]}, "out of range"),
        (
            {"containers": [{"name": "mlserver", "resources": {"requests": {"memory": "2Ei"}}}]},
            "out of range",
        ),
        ({"containers": [{"name": "mlserver", "resources": {"requests": "10Mi"}}]}, "must be a mapping"),
        (
            {
                "containers": [
                    {"name": "agent", "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE", "value": "1001"}]}
                ]
            },
            "out of range",
        ),
        (
            {
                "containers": [
                    {"name": "agent", "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE", "value": "-5"}]}
                ]
            },
            "out of range",
        ),
        (
            {
                "containers": [
                    {"name": "agent", "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE", "value": "ten"}]}
                ]
            },
            "whole number",
        ),
        ({"containers": [{"name": "agent", "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE"}]}]}, "no value"),
        ({"containers": [{"name": "agent", "env": "SELDON_OVERCOMMIT_PERCENTAGE=5"}]}, "must be a list"),
        ({"containers": {"name": "mlserver"}}, "must be a list"),
        ({"containers": [{"image": "x"}]}, "with a name"),
        ({"containers": [{"name": f"c{i}"} for i in range(65)]}, "at most 64"),
        ("mlserver", "must be a mapping"),
    ],
)
def test_bad_values_are_refused_naming_the_field(pod_spec: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as refused:
        server_manifest(server(pod_spec))
    assert "podSpec" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "count"), [("10Mi", 10 * 2**20), ("2G", 2 * 10**9), (1, 1), ("1.5Ki", 1536)]
)
def test_memory_quantities(text: object, count: int) -> None:
    assert parse_memory(text) == count


def test_memory_is_bounded() -> None:
    assert parse_memory(MAX_MEMORY_BYTES) == MAX_MEMORY_BYTES
    with pytest.raises(ValueError, match="out of range"):
        parse_memory(MAX_MEMORY_BYTES + 1)


@pytest.mark.parametrize(("value", "percent"), [("0", 0), (10, 10), (" 100 ", 100), ("1000", 1000)])
def test_overcommit_percent(value: object, percent: int) -> None:
    assert parse_overcommit_percent(value) == percent


@pytest.mark.parametrize("value", ["1_0", "10%", 1.5, True, None, "", "1e2"])
def test_overcommit_percent_is_a_whole_number(value: object) -> None:
    with pytest.raises(ValueError, match="whole number"):
        parse_overcommit_percent(value)
