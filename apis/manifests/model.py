"""Seldon ``Model`` manifests to ``LoadModelRequest`` s (``model load -f``, the stack's demo model)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from apis.manifests._common import (
    ManifestError,
    _bool,
    _fill_meta,
    _mapping,
    _parse_documents,
    _read,
    _reject_unknown,
    _resource,
    _string,
    _string_list,
    _text,
    _type_name,
    _uint32,
)
from apis.mlops.scheduler import scheduler_pb2
from apis.quantity import parse_quantity
from apis.validation import validate_capability, validate_model, validate_name

KIND = "Model"
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


def read_model_requests(path: str) -> list[scheduler_pb2.LoadModelRequest]:
    """Parse every Model document in ``path``; raises ManifestFileError naming file and document."""
    text = _read(path)
    return parse_model_requests(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def parse_model_requests(text: str, *, source: str, base_dir: str) -> list[scheduler_pb2.LoadModelRequest]:
    return _parse_documents(
        text,
        source=source,
        kind=KIND,
        build=lambda document: model_request(document, base_dir=base_dir),
        name_of=lambda request: request.model.meta.name,
    )


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
