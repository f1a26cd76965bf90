"""Validation of user-supplied resources, shared by the scheduler API and the CLI.

Names become Envoy cluster/route names, file-system paths and (later) Kafka topics, so they are
checked before anything else touches them.
"""

from __future__ import annotations

import re

from apis.mlops.scheduler import scheduler_pb2

# DNS-1123 label: what Kubernetes (and Seldon's store) accept as a resource name.
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 63
# A capability is a free-form tag such as "sklearn" or "mlserver-1.3.4".
_CAPABILITY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


class InvalidResource(ValueError):
    """A resource the user sent is malformed; the message says what is wrong."""


def validate_name(name: str, *, kind: str = "model") -> str:
    if not name:
        raise InvalidResource(f"{kind} name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidResource(f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    if not _DNS1123_LABEL.match(name):
        raise InvalidResource(
            f"{kind} name {name!r} is invalid: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    return name


def validate_capability(tag: str) -> str:
    if not _CAPABILITY.match(tag.strip()):
        raise InvalidResource(f"capability {tag!r} is invalid: use letters, digits, '.', '_' and '-'")
    return tag.strip()


def validate_model(model: scheduler_pb2.Model) -> None:
    """Check a model definition as received by LoadModel; raises InvalidResource."""
    validate_name(model.meta.name)
    spec = model.modelSpec
    if not spec.uri:
        raise InvalidResource(f"model {model.meta.name!r} has no storageUri")
    if "\x00" in spec.uri:
        raise InvalidResource("storageUri contains a NUL byte")
    for requirement in spec.requirements:
        validate_capability(requirement)
    if spec.HasField("server"):
        validate_name(spec.server, kind="server")
    deployment = model.deploymentSpec
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
    low, high = server.minReplicas, server.maxReplicas
    if high and replicas > high:
        raise InvalidResource(f"server {name}: replicas ({replicas}) is above maxReplicas ({high})")
    if replicas < low:
        raise InvalidResource(f"server {name}: replicas ({replicas}) is below minReplicas ({low})")
