"""What meshserve reads from a Server's ``spec.podSpec`` (Seldon's per-container override).

Seldon declares a replica's memory the Kubernetes way, on the model server's container,
``containers[name: mlserver].resources.requests.memory``, and the overcommit on the agent's,
``containers[name: agent].env[name: SELDON_OVERCOMMIT_PERCENTAGE]``. Those two are read and checked;
the rest of a pod spec (images, volumes, node selectors, other containers) means nothing to local
processes and is accepted as it is, so a Seldon manifest loads unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apis.manifests._common import ManifestError, _mapping, _type_name
from apis.quantity import parse_memory
from apis.validation import parse_overcommit_percent

MODEL_SERVER_CONTAINER = "mlserver"
AGENT_CONTAINER = "agent"
OVERCOMMIT_ENV = "SELDON_OVERCOMMIT_PERCENTAGE"
MAX_CONTAINERS = 64
MAX_ENV = 1_024
_PREFIX = "spec.podSpec.containers"


@dataclass(frozen=True)
class ReplicaResources:
    """A replica's memory and overcommit as the pod spec declares them (None: not declared)."""

    memory_bytes: int | None = None
    overcommit_percent: int | None = None


def replica_resources(spec: Mapping[str, Any]) -> ReplicaResources:
    pod = _mapping(spec, "podSpec", prefix="spec.")
    containers = pod.get("containers")
    if containers is None:
        return ReplicaResources()
    if not isinstance(containers, list) or len(containers) > MAX_CONTAINERS:
        raise ManifestError(f"{_PREFIX} must be a list of at most {MAX_CONTAINERS} containers")
    by_name: dict[str, dict[str, Any]] = {}
    for index, container in enumerate(containers):
        if not isinstance(container, dict) or not isinstance(container.get("name"), str):
            raise ManifestError(f"{_PREFIX}[{index}] must be a mapping with a name")
        by_name.setdefault(container["name"], container)
    return ReplicaResources(
        memory_bytes=_memory(by_name.get(MODEL_SERVER_CONTAINER)),
        overcommit_percent=_overcommit(by_name.get(AGENT_CONTAINER)),
    )


def _memory(container: Mapping[str, Any] | None) -> int | None:
    if container is None:
        return None
    where = f"{_PREFIX}[name: {MODEL_SERVER_CONTAINER}].resources"
    requests = _mapping(_mapping(container, "resources", prefix=where), "requests", prefix=f"{where}.")
    if "memory" not in requests:
        return None
    try:
        return parse_memory(requests["memory"])
    except ValueError as exc:
        raise ManifestError(f"{where}.requests.memory: {exc}") from exc


def _overcommit(container: Mapping[str, Any] | None) -> int | None:
    if container is None:
        return None
    where = f"{_PREFIX}[name: {AGENT_CONTAINER}].env"
    env = container.get("env") or []
    if not isinstance(env, list) or len(env) > MAX_ENV:
        raise ManifestError(f"{where} must be a list of at most {MAX_ENV} variables, got {_type_name(env)}")
    for variable in env:
        if isinstance(variable, dict) and variable.get("name") == OVERCOMMIT_ENV:
            if "value" not in variable:
                raise ManifestError(f"{where}[name: {OVERCOMMIT_ENV}] has no value (valueFrom is not read)")
            try:
                return parse_overcommit_percent(variable["value"])
            except ValueError as exc:
                raise ManifestError(f"{where}[name: {OVERCOMMIT_ENV}]: {exc}") from exc
    return None
