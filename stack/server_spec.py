"""A Server's replica spec, left by ``meshserve server load`` for the local stack's controller.

``$MESHSERVE_HOME/resources/servers/<server>.json`` holds what each replica's agent is started
with: capabilities, and the memory and overcommit the Server's ``podSpec`` declared; and the
replica bounds the controller scales within. What a
manifest leaves out falls back to ``meshserve up``'s ``--capabilities``, ``--server-memory`` and
``--overcommit-percent``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from apis.manifests.server import ServerManifest
from apis.quantity import parse_memory
from apis.validation import parse_overcommit_percent
from stack.config import StackConfig


@dataclass(frozen=True)
class ReplicaSpec:
    capabilities: str  # comma-separated, as the agent's --capabilities takes them
    memory_bytes: int
    overcommit_percent: int


def server_spec_file(home: Path, server: str) -> Path:
    """Where ``meshserve server load`` leaves a Server's replica spec for the local controller."""
    return home / "resources" / "servers" / f"{server}.json"


def spec_text(manifest: ServerManifest) -> str:
    spec: dict[str, object] = {
        "capabilities": list(manifest.capabilities),
        # The controller carries out the scheduler's ScalingRequests within these bounds.
        "minReplicas": manifest.notify.minReplicas,
        "maxReplicas": manifest.notify.maxReplicas,
    }
    if manifest.resources.memory_bytes is not None:
        spec["memoryBytes"] = manifest.resources.memory_bytes
    if manifest.resources.overcommit_percent is not None:
        spec["overcommitPercent"] = manifest.resources.overcommit_percent
    return json.dumps(spec)


def default_spec(config: StackConfig) -> ReplicaSpec:
    return ReplicaSpec(config.capabilities, config.server_memory, config.overcommit_percent)


def read_replica_spec(config: StackConfig, server: str) -> ReplicaSpec:
    """The spec ``server``'s replicas start with; the stack's defaults if no Server declared one.

    Raises ValueError naming the file when it was edited into something the agent could not take.
    """
    path = server_spec_file(config.home, server)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        return default_spec(config)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable server spec: {exc}") from exc
    try:
        return ReplicaSpec(
            capabilities=",".join(spec["capabilities"]),
            memory_bytes=parse_memory(spec.get("memoryBytes", config.server_memory)),
            overcommit_percent=parse_overcommit_percent(
                spec.get("overcommitPercent", config.overcommit_percent)
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid server spec: {exc}") from exc
