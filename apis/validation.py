"""Validation of user-supplied resources, shared by the scheduler API and the CLI.

Names become Envoy cluster/route names, file-system paths and (later) Kafka topics, so they are
checked before anything else touches them. Every pattern is matched against the *whole* value
(``re.fullmatch``: ``$`` alone would accept a trailing newline), and every number and length has an
upper bound from :mod:`apis.limits`, so what is accepted fits every message, status field and
process it later reaches.
"""

from __future__ import annotations

import ipaddress
import re

from apis.limits import (
    MAX_CAPABILITY_LENGTH,
    MAX_GENERATION,
    MAX_MEMORY_BYTES,
    MAX_NAME_LENGTH,
    MAX_PARALLEL_WORKERS,
    MAX_PARAMETER_NAME_LENGTH,
    MAX_PARAMETERS,
    MAX_REPLICAS,
    MAX_REQUIREMENTS,
    MAX_RESOURCE_BYTES,
    MAX_URI_LENGTH,
)
from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2

__all__ = [
    "MAX_NAME_LENGTH",
    "InvalidResource",
    "validate_capability",
    "validate_model",
    "validate_name",
    "validate_server",
]

# DNS-1123 label: what Kubernetes (and Seldon's store) accept as a resource name.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A capability is a free-form tag such as "sklearn" or "mlserver-1.3.4".
_CAPABILITY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
# C0 controls and DEL: never part of a URI, secret name or parameter name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidResource(ValueError):
    """A resource the user sent is malformed; the message says what is wrong."""


def validate_name(name: str, *, kind: str = "model") -> str:
    if not name:
        raise InvalidResource(f"{kind} name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidResource(f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not _DNS1123_LABEL.fullmatch(name):
        raise InvalidResource(
            f"{kind} name {_shown(name)} is invalid: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    return name


def validate_capability(tag: str) -> str:
    """A capability tag, surrounding blanks removed (as in a comma-separated list)."""
    stripped = tag.strip()
    if len(stripped) > MAX_CAPABILITY_LENGTH:
        raise InvalidResource(
            f"capability is {len(stripped)} characters long; the limit is {MAX_CAPABILITY_LENGTH}"
        )
    if not _CAPABILITY.fullmatch(stripped):
        raise InvalidResource(f"capability {_shown(tag)} is invalid: use letters, digits, '.', '_' and '-'")
    return stripped


def validate_model(model: scheduler_pb2.Model) -> None:
    """Check a model definition as received by LoadModel; raises InvalidResource."""
    name = validate_name(model.meta.name)
    _check_size(model, f"model {name}")
    _check_meta(model.meta, f"model {name}")
    spec = model.modelSpec
    if not spec.uri:
        raise InvalidResource(f"model {name!r} has no storageUri")
    if "\x00" in spec.uri:
        raise InvalidResource("storageUri contains a NUL byte")
    _check_text(spec.uri, "storageUri", MAX_URI_LENGTH)
    _check_count(len(spec.requirements), "requirements", MAX_REQUIREMENTS)
    for requirement in spec.requirements:
        if validate_capability(requirement) != requirement:
            raise InvalidResource(f"requirement {requirement!r} has surrounding blanks")
    if spec.memoryBytes > MAX_MEMORY_BYTES:
        raise InvalidResource(f"memory ({spec.memoryBytes} bytes) is above the limit of {MAX_MEMORY_BYTES}")
    if spec.HasField("server"):
        validate_name(spec.server, kind="server")
    _check_count(len(spec.parameters), "parameters", MAX_PARAMETERS)
    for position, parameter in enumerate(spec.parameters):
        if not parameter.name:
            raise InvalidResource(f"parameters[{position}] has no name")
        _check_text(parameter.name, f"parameters[{position}].name", MAX_PARAMETER_NAME_LENGTH)
    config = spec.storageConfig
    if config.HasField("storageSecretName"):
        _check_text(config.storageSecretName, "storage secret name", MAX_URI_LENGTH)
    if spec.HasField("explainer"):
        _check_text(spec.explainer.type, "explainer type", MAX_NAME_LENGTH)
        _check_refs(spec.explainer, "explainer")
    if spec.HasField("llm"):
        _check_refs(spec.llm, "llm")
    workers = spec.modelRuntimeInfo.mlserver.parallelWorkers
    if workers > MAX_PARALLEL_WORKERS:
        raise InvalidResource(f"parallelWorkers ({workers}) is above the limit of {MAX_PARALLEL_WORKERS}")
    for topic, what in (
        (model.streamSpec.inputTopic, "inputTopic"),
        (model.streamSpec.outputTopic, "outputTopic"),
    ):
        _check_text(topic, what, MAX_URI_LENGTH)
    deployment = model.deploymentSpec
    for value, field in (
        (deployment.replicas, "replicas"),
        (deployment.minReplicas, "minReplicas"),
        (deployment.maxReplicas, "maxReplicas"),
    ):
        _check_replicas(value, field, f"model {name}")
    if deployment.maxReplicas and deployment.maxReplicas < deployment.replicas:
        raise InvalidResource(
            f"maxReplicas ({deployment.maxReplicas}) is below replicas ({deployment.replicas})"
        )
    if deployment.minReplicas and deployment.replicas and deployment.replicas < deployment.minReplicas:
        raise InvalidResource(
            f"replicas ({deployment.replicas}) is below minReplicas ({deployment.minReplicas})"
        )


def validate_server(server: scheduler_pb2.ServerNotify) -> None:
    """Check a server declaration (ServerNotify); raises InvalidResource."""
    name, replicas = validate_name(server.name, kind="server"), server.expectedReplicas
    _check_size(server, f"server {name}")
    if server.HasField("kubernetesMeta"):
        _check_kubernetes_meta(server.kubernetesMeta, f"server {name}")
    low, high = server.minReplicas, server.maxReplicas
    for value, field in ((replicas, "replicas"), (low, "minReplicas"), (high, "maxReplicas")):
        _check_replicas(value, field, f"server {name}")
    if high and replicas > high:
        raise InvalidResource(f"server {name}: replicas ({replicas}) is above maxReplicas ({high})")
    if replicas < low:
        raise InvalidResource(f"server {name}: replicas ({replicas}) is below minReplicas ({low})")


def _check_size(resource: scheduler_pb2.Model | scheduler_pb2.ServerNotify, what: str) -> None:
    size = resource.ByteSize()
    if size > MAX_RESOURCE_BYTES:
        raise InvalidResource(
            f"{what} is {size} bytes serialized; the limit is {MAX_RESOURCE_BYTES} bytes "
            f"({MAX_RESOURCE_BYTES // 1024} KiB): keep large data in the artifact, not the resource"
        )


def _check_meta(meta: scheduler_pb2.MetaData, what: str) -> None:
    if meta.HasField("kind"):
        _check_text(meta.kind, "meta.kind", MAX_NAME_LENGTH)
    if meta.HasField("version"):
        _check_text(meta.version, "meta.version", MAX_NAME_LENGTH)
    if meta.HasField("kubernetesMeta"):
        _check_kubernetes_meta(meta.kubernetesMeta, what)


def _check_kubernetes_meta(meta: scheduler_pb2.KubernetesMeta, what: str) -> None:
    if meta.namespace:
        validate_name(meta.namespace, kind="namespace")
    if not 0 <= meta.generation <= MAX_GENERATION:
        raise InvalidResource(f"{what}: generation ({meta.generation}) must be within 0..{MAX_GENERATION}")


def _check_refs(spec: scheduler_pb2.ExplainerSpec | scheduler_pb2.LlmSpec, what: str) -> None:
    if spec.HasField("modelRef"):
        validate_name(spec.modelRef, kind=f"{what} modelRef")
    if spec.HasField("pipelineRef"):
        validate_name(spec.pipelineRef, kind=f"{what} pipelineRef")


def _check_replicas(value: int, field: str, what: str) -> None:
    if value > MAX_REPLICAS:
        raise InvalidResource(f"{what}: {field} ({value}) is above the limit of {MAX_REPLICAS}")


def _check_count(count: int, field: str, limit: int) -> None:
    if count > limit:
        raise InvalidResource(f"{field} has {count} entries; the limit is {limit}")


def _check_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidResource(f"{field} is {len(value)} characters long; the limit is {limit}")
    if _CONTROL.search(value):
        raise InvalidResource(f"{field} {_shown(value)} contains a control character")


def _shown(value: str, limit: int = 80) -> str:
    """``repr`` of a user value, cut short: error messages must stay readable (and small)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- agent registration (AgentSubscribeRequest) ----------------------------------------------------

# replicaIdx becomes part of Envoy endpoint and process names; a server has at most this many.
MAX_REPLICA_INDEX = 999
# Memory a replica may promise beyond its own, in percent (Seldon's SELDON_OVERCOMMIT_PERCENTAGE).
MAX_OVERCOMMIT_PERCENTAGE = 1_000
MAX_REPLICA_CAPABILITIES = 64
MAX_LOADED_MODELS = 100_000
MAX_HOSTNAME_LENGTH = 253
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")


def parse_overcommit_percent(value: object) -> int:
    """An overcommit percentage given as text or a whole number: 0 to MAX_OVERCOMMIT_PERCENTAGE."""
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,12}", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not a whole number of percent")
    percent = value
    if not 0 <= percent <= MAX_OVERCOMMIT_PERCENTAGE:
        raise ValueError(
            f"{value!r} is out of range: overcommit must be 0 to {MAX_OVERCOMMIT_PERCENTAGE} percent"
        )
    return percent


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (not a hostname)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def validate_host(host: str, *, what: str = "host") -> str:
    """A bare hostname (RFC 1123) or an IPv4/IPv6 address: no scheme, port, path or spaces."""
    if not host:
        raise InvalidResource(f"{what} is empty")
    if len(host) > MAX_HOSTNAME_LENGTH:
        raise InvalidResource(f"{what} is {len(host)} characters long; the limit is {MAX_HOSTNAME_LENGTH}")
    if is_ip_address(host):
        return host
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    valid = all(len(label) <= MAX_NAME_LENGTH and _HOST_LABEL.fullmatch(label) for label in labels)
    # A numeric last label is no hostname but a malformed IP address such as 999.1.1.1.
    if not valid or labels[-1].isdigit():
        raise InvalidResource(
            f"{what} {_shown(host)} is invalid: give a hostname or an IP address only "
            "(no scheme, port, path or spaces)"
        )
    return host


def validate_port(port: int, *, what: str = "port") -> int:
    if not 1 <= port <= 65535:
        raise InvalidResource(f"{what} {port} is out of range: use 1-65535")
    return port


def validate_registration(request: agent_pb2.AgentSubscribeRequest) -> None:
    """Check an agent's Subscribe request before it becomes a replica (and an Envoy endpoint).

    Raises InvalidResource naming the first bad field; the caller changes nothing then.
    """
    server = validate_name(request.serverName, kind="server")
    where = f"server {server} replica {request.replicaIdx}"
    if request.replicaIdx > MAX_REPLICA_INDEX:
        raise InvalidResource(f"{where}: replicaIdx is out of range: use 0-{MAX_REPLICA_INDEX}")
    config = request.replicaConfig
    validate_host(config.inferenceSvc, what=f"{where}: replicaConfig.inferenceSvc")
    validate_port(config.inferenceHttpPort, what=f"{where}: replicaConfig.inferenceHttpPort")
    validate_port(config.inferenceGrpcPort, what=f"{where}: replicaConfig.inferenceGrpcPort")
    if config.reloadHttpPort or config.reloadGrpcPort:  # meshserve's reload listener: both or none
        validate_port(config.reloadHttpPort, what=f"{where}: replicaConfig.reloadHttpPort")
        validate_port(config.reloadGrpcPort, what=f"{where}: replicaConfig.reloadGrpcPort")
    if config.memoryBytes > MAX_MEMORY_BYTES:
        raise InvalidResource(
            f"{where}: replicaConfig.memoryBytes {config.memoryBytes} is above the limit {MAX_MEMORY_BYTES}"
        )
    if config.overCommitPercentage > MAX_OVERCOMMIT_PERCENTAGE:
        raise InvalidResource(
            f"{where}: replicaConfig.overCommitPercentage {config.overCommitPercentage} is above "
            f"the limit {MAX_OVERCOMMIT_PERCENTAGE}"
        )
    capacity = config.memoryBytes + config.memoryBytes * config.overCommitPercentage // 100
    if request.availableMemoryBytes > capacity:
        raise InvalidResource(
            f"{where}: availableMemoryBytes {request.availableMemoryBytes} is above the replica's "
            f"capacity {capacity} (memoryBytes plus overcommit)"
        )
    if len(config.capabilities) > MAX_REPLICA_CAPABILITIES:
        raise InvalidResource(
            f"{where}: {len(config.capabilities)} capabilities; the limit is {MAX_REPLICA_CAPABILITIES}"
        )
    for capability in config.capabilities:
        validate_capability(capability)
    if len(request.loadedModels) > MAX_LOADED_MODELS:
        raise InvalidResource(
            f"{where}: {len(request.loadedModels)} loaded models reported; the limit is {MAX_LOADED_MODELS}"
        )
