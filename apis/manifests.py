"""Seldon ``Model``, ``Server`` and ``Experiment`` manifests (``mlops.seldon.io/v1alpha1``) to
scheduler requests.

A contract shared by the CLI (``model load -f``, ``server load -f``, ``experiment start -f``) and
the local stack (its demo model): the YAML users write, as Seldon's CRDs define it, read one way.
Everything in a file is parsed and validated before the caller sends anything, so a bad third
document never leaves the first two loaded. Errors: :class:`ManifestFileError` names the file and
document; inside it, :class:`ManifestError` or ``InvalidResource`` names the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from apis.limits import MAX_GENERATION, MAX_REQUIREMENTS
from apis.mlops.scheduler import scheduler_pb2
from apis.names import MLSERVER_CAPABILITIES
from apis.quantity import parse_quantity
from apis.validation import (
    InvalidResource,
    validate_capability,
    validate_model,
    validate_name,
    validate_server,
)

API_VERSION = "mlops.seldon.io/v1alpha1"
KIND = "Model"
_TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_SPEC_FIELDS = frozenset(
    {
        "storageUri",
        "requirements",
        "memory",
        "server",
        "artifactVersion",
        "parameters",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "logPayloads",
        "dataflow",
        "explainer",
        "llm",
        "secretName",
    }
)
# "gs://bucket", "s3:bucket/x" (rclone remote) or "file:..." are left alone; anything else is a path.
_REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+._-]*:")
_FILE_SCHEME = "file://"
_UINT32_MAX = 2**32 - 1


class ManifestError(ValueError):
    """One document is wrong; the message names the field."""


class ManifestFileError(ValueError):
    """A manifest file cannot be used; the message names the file (and document)."""


def read_model_requests(path: str) -> list[scheduler_pb2.LoadModelRequest]:
    """Parse every Model document in ``path``; raises ManifestFileError naming file and document."""
    text = _read(path)
    return parse_model_requests(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


# -- Server resources --------------------------------------------------------------------------------

SERVER_KIND = "Server"
# Seldon's default ServerConfig capabilities, for the runtimes meshserve's local servers install.
SERVER_CONFIGS = {"mlserver": MLSERVER_CAPABILITIES}
_SERVER_SPEC_FIELDS = frozenset(
    {"serverConfig", "replicas", "minReplicas", "maxReplicas", "capabilities", "extraCapabilities"}
)


@dataclass(frozen=True)
class ServerManifest:
    notify: scheduler_pb2.ServerNotify
    capabilities: tuple[str, ...]


def read_server_manifests(path: str) -> list[ServerManifest]:
    """Parse every Server document in ``path``; raises ManifestFileError naming file and document."""
    text = _read(path)
    manifests: list[ServerManifest] = []
    for index, document in enumerate(_load_documents(text, path), start=1):
        if document is None:
            continue
        try:
            manifests.append(server_manifest(document))
        except (ManifestError, InvalidResource) as exc:
            raise ManifestFileError(f"{path}: document {index}: {exc}") from exc
    if not manifests:
        raise ManifestFileError(f"{path}: no Server documents found")
    return manifests


def server_manifest(document: object) -> ServerManifest:
    """A Server resource: replica counts for the scheduler, capabilities for the server's agents.

    ``capabilities`` replaces the server config's defaults; ``extraCapabilities`` appends to them.
    """
    spec = _resource(document, SERVER_KIND, "server load")
    _reject_unknown(spec, _SERVER_SPEC_FIELDS, prefix="spec.")
    name = _string(_mapping(document, "metadata", required=True), "name", "metadata.")  # type: ignore[arg-type]
    if not name:
        raise ManifestError("metadata.name is missing")
    config = _string(spec, "serverConfig", "spec.") or "mlserver"
    if config not in SERVER_CONFIGS:
        raise ManifestError(
            f"spec.serverConfig {config!r} is unknown; available: {', '.join(SERVER_CONFIGS)}"
        )
    notify = scheduler_pb2.ServerNotify(
        name=name,
        expectedReplicas=_uint32(spec, "replicas") if "replicas" in spec else 1,
        minReplicas=_uint32(spec, "minReplicas") if "minReplicas" in spec else 0,
        maxReplicas=_uint32(spec, "maxReplicas") if "maxReplicas" in spec else 0,
        shared=True,
    )
    base = tuple(_string_list(spec, "capabilities")) if "capabilities" in spec else SERVER_CONFIGS[config]
    capabilities = tuple(
        dict.fromkeys(validate_capability(c) for c in (*base, *_string_list(spec, "extraCapabilities")))
    )
    if not capabilities:
        raise ManifestError("spec.capabilities is empty: the server could run no model")
    validate_server(notify)
    return ServerManifest(notify, capabilities)


# -- Experiment resources ----------------------------------------------------------------------------

EXPERIMENT_KIND = "Experiment"
_EXPERIMENT_SPEC_FIELDS = frozenset({"default", "candidates", "mirror", "resourceType", "config"})
_RESOURCE_TYPES = {"model": scheduler_pb2.MODEL, "pipeline": scheduler_pb2.PIPELINE}
# Older Seldon samples spelled a candidate's name "modelName"; say so instead of just "unknown".
_RENAMED = {"modelName": "name"}


ExperimentCheck = Callable[[scheduler_pb2.Experiment], object]


def read_experiment_requests(
    path: str, *, check: ExperimentCheck | None = None
) -> list[scheduler_pb2.StartExperimentRequest]:
    """Parse every Experiment document in ``path``; raises ManifestFileError naming file and document.

    ``check`` (e.g. ``experiments.model.Experiment.from_proto``, which this layer may not import)
    runs on each experiment; its ``InvalidResource`` is reported with the file and document too.
    """
    return parse_experiment_requests(_read(path), source=path, check=check)


def parse_experiment_requests(
    text: str, *, source: str, check: ExperimentCheck | None = None
) -> list[scheduler_pb2.StartExperimentRequest]:
    requests: list[scheduler_pb2.StartExperimentRequest] = []
    seen: dict[str, int] = {}
    for index, document in enumerate(_load_documents(text, source), start=1):
        if document is None:
            continue
        try:
            request = experiment_request(document)
            if check is not None:
                check(request.experiment)
            name = request.experiment.name
            if name in seen:
                raise ManifestError(f"experiment {name!r} is already defined in document {seen[name]}")
        except (ManifestError, InvalidResource) as exc:
            raise ManifestFileError(f"{source}: document {index}: {exc}") from exc
        seen[name] = index
        requests.append(request)
    if not requests:
        raise ManifestFileError(f"{source}: no Experiment documents found")
    return requests


def experiment_request(document: object) -> scheduler_pb2.StartExperimentRequest:
    """One Experiment resource to a StartExperimentRequest, structure and names checked.

    The rules between fields (default among the candidates, weights not all zero, mirror percent)
    belong to the experiment model (``experiments.model``), which the scheduler applies.
    """
    spec = _resource(document, EXPERIMENT_KIND, "experiment start")
    metadata = _mapping(document, "metadata", required=True)  # type: ignore[arg-type]
    _reject_unknown(spec, _EXPERIMENT_SPEC_FIELDS, prefix="spec.")
    experiment = scheduler_pb2.Experiment()
    meta = scheduler_pb2.MetaData()
    _fill_meta(meta, metadata)
    experiment.name = validate_name(meta.name, kind="experiment")
    if meta.HasField("kubernetesMeta"):
        experiment.kubernetesMeta.CopyFrom(meta.kubernetesMeta)
    default = _string(spec, "default", "spec.")
    if default is not None:
        experiment.default = validate_name(default, kind="spec.default: model")
    experiment.candidates.extend(_experiment_candidates(spec))
    if "mirror" in spec:
        mirror = _mapping(spec, "mirror", prefix="spec.", required=True)
        _reject_unknown(mirror, frozenset({"name", "percent"}), prefix="spec.mirror.")
        name = _string(mirror, "name", "spec.mirror.")
        if not name:
            raise ManifestError("spec.mirror.name is missing")
        experiment.mirror.name = validate_name(name, kind="spec.mirror: model")
        if "percent" not in mirror:
            raise ManifestError("spec.mirror.percent is missing (1..100 of the requests to copy)")
        experiment.mirror.percent = _uint32(mirror, "percent", "spec.mirror.")
    resource_type = _string(spec, "resourceType", "spec.")
    if resource_type is not None:
        if resource_type not in _RESOURCE_TYPES:
            raise ManifestError(
                f"spec.resourceType {resource_type!r} is unknown; use one of: {', '.join(_RESOURCE_TYPES)}"
            )
        experiment.resourceType = _RESOURCE_TYPES[resource_type]
    if "config" in spec:
        config = _mapping(spec, "config", prefix="spec.", required=True)
        _reject_unknown(config, frozenset({"stickySessions"}), prefix="spec.config.")
        experiment.config.SetInParent()
        if "stickySessions" in config:
            experiment.config.stickySessions = _bool(config, "stickySessions", "spec.config.")
    return scheduler_pb2.StartExperimentRequest(experiment=experiment)


def _experiment_candidates(spec: Mapping[str, Any]) -> list[scheduler_pb2.ExperimentCandidate]:
    raw = spec.get("candidates")
    if raw is None or raw == []:
        raise ManifestError("spec.candidates is missing: list at least one {name, weight}")
    if not isinstance(raw, list):
        raise ManifestError(f"spec.candidates must be a list of {{name, weight}}, got {_type_name(raw)}")
    candidates = []
    for position, item in enumerate(raw):
        prefix = f"spec.candidates[{position}]."
        if not isinstance(item, dict):
            raise ManifestError(
                f"{prefix[:-1]} must be a mapping with name and weight, got {_type_name(item)}"
            )
        for old, new in _RENAMED.items():
            if old in item:
                raise ManifestError(f"unknown field {prefix}{old}: use {prefix}{new}")
        _reject_unknown(item, frozenset({"name", "weight"}), prefix=prefix)
        name = _string(item, "name", prefix)
        if not name:
            raise ManifestError(f"{prefix}name is missing")
        if "weight" not in item:
            raise ManifestError(f"{prefix}weight is missing (a relative share, e.g. 50)")
        candidates.append(
            scheduler_pb2.ExperimentCandidate(
                name=validate_name(name, kind=f"{prefix[:-1]}: model"), weight=_uint32(item, "weight", prefix)
            )
        )
    return candidates


def _resource(document: object, kind: str, command: str) -> dict[str, Any]:
    """Common checks of a Seldon resource; returns its spec."""
    if not isinstance(document, dict):
        raise ManifestError(f"expected a mapping (a Kubernetes resource), got {_type_name(document)}")
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(f"apiVersion is {document.get('apiVersion')!r}; expected {API_VERSION!r}")
    if document.get("kind") != kind:
        raise ManifestError(f"kind is {document.get('kind')!r}; '{command}' takes kind {kind!r}")
    _reject_unknown(document, _TOP_LEVEL_FIELDS, prefix="")
    return _mapping(document, "spec", required=True)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ManifestFileError(f"{path}: {exc.strerror or exc}") from exc


def parse_model_requests(text: str, *, source: str, base_dir: str) -> list[scheduler_pb2.LoadModelRequest]:
    requests: list[scheduler_pb2.LoadModelRequest] = []
    seen: dict[str, int] = {}
    for index, document in enumerate(_load_documents(text, source), start=1):
        if document is None:  # an empty document, e.g. after a trailing "---"
            continue
        try:
            request = model_request(document, base_dir=base_dir)
            name = request.model.meta.name
            if name in seen:
                raise ManifestError(f"model {name!r} is already defined in document {seen[name]}")
        except (ManifestError, InvalidResource) as exc:
            raise ManifestFileError(f"{source}: document {index}: {exc}") from exc
        seen[name] = index
        requests.append(request)
    if not requests:
        raise ManifestFileError(f"{source}: no Model documents found")
    return requests


def _load_documents(text: str, source: str) -> list[Any]:
    documents: list[Any] = []
    try:
        for document in yaml.safe_load_all(text):
            documents.append(document)
    except yaml.YAMLError as exc:
        raise ManifestFileError(f"{source}: document {len(documents) + 1}: {_yaml_problem(exc)}") from exc
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp with a 13th month
        raise ManifestFileError(
            f"{source}: document {len(documents) + 1}: invalid YAML value: {exc}"
        ) from exc
    except RecursionError as exc:
        raise ManifestFileError(f"{source}: document {len(documents) + 1}: YAML nested too deeply") from exc
    return documents


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def model_request(document: object, *, base_dir: str) -> scheduler_pb2.LoadModelRequest:
    """One manifest to a validated LoadModelRequest; raises ManifestError or InvalidResource."""
    spec = _resource(document, KIND, "model load")
    metadata = _mapping(document, "metadata", required=True)  # type: ignore[arg-type]
    _reject_unknown(spec, _SPEC_FIELDS, prefix="spec.")

    model = scheduler_pb2.Model()
    _fill_meta(model.meta, metadata)
    _fill_model_spec(model.modelSpec, spec, base_dir)
    _fill_deployment(model.deploymentSpec, spec)
    dataflow = _mapping(spec, "dataflow", prefix="spec.")
    _reject_unknown(dataflow, frozenset({"cleanTopicsOnDelete"}), prefix="spec.dataflow.")
    if "cleanTopicsOnDelete" in dataflow:
        model.dataflowSpec.cleanTopicsOnDelete = _bool(dataflow, "cleanTopicsOnDelete", "spec.dataflow.")
    validate_model(model)
    return scheduler_pb2.LoadModelRequest(model=model)


def _fill_meta(meta: scheduler_pb2.MetaData, metadata: Mapping[str, Any]) -> None:
    name = _string(metadata, "name", "metadata.")
    if name is None:
        raise ManifestError("metadata.name is missing")
    meta.name = name
    # Labels, annotations and the like are Kubernetes-only and have no place in the scheduler API.
    namespace = _string(metadata, "namespace", "metadata.")
    if namespace is not None:
        meta.kubernetesMeta.namespace = namespace
    if "generation" in metadata:
        generation = metadata["generation"]
        if (
            isinstance(generation, bool)
            or not isinstance(generation, int)
            or not 0 <= generation <= MAX_GENERATION
        ):
            raise ManifestError(
                f"metadata.generation must be an integer within 0..{MAX_GENERATION}, got {generation!r}"
            )
        meta.kubernetesMeta.generation = generation


def _fill_model_spec(model_spec: scheduler_pb2.ModelSpec, spec: Mapping[str, Any], base_dir: str) -> None:
    uri = _string(spec, "storageUri", "spec.")
    if not uri:
        raise ManifestError("spec.storageUri is missing")
    model_spec.uri = resolve_storage_uri(uri, base_dir)
    model_spec.requirements.extend(validate_capability(r) for r in _string_list(spec, "requirements"))
    if "memory" in spec:
        try:
            model_spec.memoryBytes = parse_quantity(spec["memory"])
        except ValueError as exc:
            raise ManifestError(f"spec.memory: {exc}") from exc
    server = _string(spec, "server", "spec.")
    if server is not None:
        model_spec.server = server
    if "artifactVersion" in spec:
        model_spec.artifactVersion = _uint32(spec, "artifactVersion")
    for parameter in _parameters(spec):
        model_spec.parameters.append(parameter)
    secret = _string(spec, "secretName", "spec.")
    if secret is not None:
        model_spec.storageConfig.storageSecretName = secret
    _fill_references(model_spec, spec)


def _fill_references(model_spec: scheduler_pb2.ModelSpec, spec: Mapping[str, Any]) -> None:
    # explainer and llm share the proto oneof model_spec, so at most one may be set.
    if "explainer" in spec and "llm" in spec:
        raise ManifestError("spec.explainer and spec.llm cannot both be set")
    if "explainer" in spec:
        explainer = _mapping(spec, "explainer", prefix="spec.")
        _reject_unknown(explainer, frozenset({"type", "modelRef", "pipelineRef"}), prefix="spec.explainer.")
        kind = _string(explainer, "type", "spec.explainer.")
        if not kind:
            raise ManifestError("spec.explainer.type is missing")
        model_spec.explainer.type = kind
        _fill_refs(model_spec.explainer, explainer, "spec.explainer.")
    if "llm" in spec:
        llm = _mapping(spec, "llm", prefix="spec.")
        _reject_unknown(llm, frozenset({"modelRef", "pipelineRef"}), prefix="spec.llm.")
        model_spec.llm.SetInParent()  # an empty llm block still selects the LLM runtime
        _fill_refs(model_spec.llm, llm, "spec.llm.")


def _fill_refs(
    target: scheduler_pb2.ExplainerSpec | scheduler_pb2.LlmSpec, source: Mapping[str, Any], prefix: str
) -> None:
    model_ref = _string(source, "modelRef", prefix)
    pipeline_ref = _string(source, "pipelineRef", prefix)
    if model_ref is not None and pipeline_ref is not None:
        raise ManifestError(f"{prefix}modelRef and {prefix}pipelineRef cannot both be set")
    if model_ref is not None:
        target.modelRef = validate_name(model_ref, kind=f"{prefix}modelRef")
    if pipeline_ref is not None:
        target.pipelineRef = validate_name(pipeline_ref, kind=f"{prefix}pipelineRef")


def _fill_deployment(deployment: scheduler_pb2.DeploymentSpec, spec: Mapping[str, Any]) -> None:
    deployment.replicas = _uint32(spec, "replicas") if "replicas" in spec else 1
    if "minReplicas" in spec:
        deployment.minReplicas = _uint32(spec, "minReplicas")
    if "maxReplicas" in spec:
        deployment.maxReplicas = _uint32(spec, "maxReplicas")
    if "logPayloads" in spec:
        deployment.logPayloads = _bool(spec, "logPayloads", "spec.")


def resolve_storage_uri(uri: str, base_dir: str) -> str:
    """Make a relative local path absolute against the manifest's folder, as a ``file://`` URI.

    Samples ship ``storageUri: ./artifacts/iris``; the agent that fetches it runs elsewhere, so
    the path must not depend on the CLI's working directory. Remote URIs pass through unchanged.
    """
    if uri.startswith(_FILE_SCHEME):
        path = uri[len(_FILE_SCHEME) :]
        if path.startswith("/"):
            return uri
    elif uri.startswith("/") or _REMOTE.match(uri):
        return uri
    else:
        path = uri
    # A relative path is on this machine by construction, so a missing one is caught here, before
    # anything is sent. Absolute paths may live on the servers' machines: the agent checks those.
    resolved = os.path.normpath(os.path.join(base_dir, path))
    if not os.path.exists(resolved):
        raise ManifestError(f"spec.storageUri {uri!r} resolves to {resolved}, which does not exist")
    return _FILE_SCHEME + resolved


def _parameters(spec: Mapping[str, Any]) -> list[scheduler_pb2.ParameterSpec]:
    raw = spec.get("parameters")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ManifestError(f"spec.parameters must be a list of {{name, value}}, got {_type_name(raw)}")
    parameters = []
    for position, item in enumerate(raw):
        prefix = f"spec.parameters[{position}]."
        if not isinstance(item, dict):
            raise ManifestError(f"{prefix[:-1]} must be a mapping with name and value")
        _reject_unknown(item, frozenset({"name", "value"}), prefix=prefix)
        name = _string(item, "name", prefix)
        if not name:
            raise ManifestError(f"{prefix}name is missing")
        parameters.append(
            scheduler_pb2.ParameterSpec(name=name, value=_scalar_text(item.get("value"), prefix))
        )
    return parameters


def _scalar_text(value: object, prefix: str) -> str:
    # The CRD types value as a string; accept YAML scalars so "value: 5" need not be quoted.
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return _text(str(value), f"{prefix}value")
    raise ManifestError(f"{prefix}value must be a scalar, got {_type_name(value)}")


def _reject_unknown(mapping: Mapping[str, Any], allowed: frozenset[str], *, prefix: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        fields = ", ".join(prefix + key for key in unknown)
        raise ManifestError(f"unknown field{'s' if len(unknown) > 1 else ''} {fields}")


def _mapping(
    parent: Mapping[str, Any], key: str, *, prefix: str = "", required: bool = False
) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{prefix}{key} is missing")
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{prefix}{key} must be a mapping, got {_type_name(value)}")
    return value


def _string(parent: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{prefix}{key} must be a string, got {_type_name(value)}")
    return _text(value, f"{prefix}{key}")


def _string_list(spec: Mapping[str, Any], key: str) -> list[str]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError(f"spec.{key} must be a list of strings")
    if len(value) > MAX_REQUIREMENTS:
        raise ManifestError(f"spec.{key} has {len(value)} entries; the limit is {MAX_REQUIREMENTS}")
    return [_text(item, f"spec.{key}") for item in value]


def _text(value: str, field: str) -> str:
    # YAML escapes can make lone surrogates, which no protobuf string (UTF-8) can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ManifestError(f"{field} is not valid text: {exc.reason}") from exc
    return value


def _uint32(spec: Mapping[str, Any], key: str, prefix: str = "spec.") -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise ManifestError(f"{prefix}{key} must be a non-negative integer, got {value!r}")
    return value


def _bool(parent: Mapping[str, Any], key: str, prefix: str) -> bool:
    value = parent[key]
    if not isinstance(value, bool):
        raise ManifestError(f"{prefix}{key} must be true or false, got {value!r}")
    return value


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)
