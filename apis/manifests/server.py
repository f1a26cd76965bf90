"""Seldon ``Server`` manifests: replica counts for the scheduler, capabilities for the agents."""

from __future__ import annotations

from dataclasses import dataclass, field

from apis.manifests._common import (
    ManifestError,
    ManifestFileError,
    _load_documents,
    _mapping,
    _read,
    _reject_unknown,
    _resource,
    _string,
    _string_list,
    _uint32,
)
from apis.manifests.pod_spec import ReplicaResources, replica_resources
from apis.mlops.scheduler import scheduler_pb2
from apis.names import MLSERVER_CAPABILITIES
from apis.validation import InvalidResource, validate_capability, validate_server

SERVER_KIND = "Server"
# Seldon's default ServerConfig capabilities, for the runtimes meshserve's local servers install.
SERVER_CONFIGS = {"mlserver": MLSERVER_CAPABILITIES}
_SERVER_SPEC_FIELDS = frozenset(
    {"serverConfig", "replicas", "minReplicas", "maxReplicas", "capabilities", "extraCapabilities", "podSpec"}
)


@dataclass(frozen=True)
class ServerManifest:
    notify: scheduler_pb2.ServerNotify
    capabilities: tuple[str, ...]
    resources: ReplicaResources = field(default_factory=ReplicaResources)


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
    Each replica's memory and overcommit come from ``podSpec`` (apis/manifests/pod_spec.py).
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
    return ServerManifest(notify, capabilities, replica_resources(spec))
