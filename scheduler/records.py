"""How models and servers are written in the state store: JSON envelopes around protobuf bytes.

The envelope's keys are the store's schema for these two kinds (``scheduler/store.py`` migrations);
change them only together with a migration. Pure functions: no I/O. orjson, not the stdlib's json:
a busy scheduler encodes a model at nearly every state change (7 -> 2.7 us a record here), and the
two read each other's output.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler.state import (
    ModelRecord,
    ModelState,
    ModelVersion,
    ReplicaState,
    ReplicaStatus,
    Server,
    ServerReplica,
)


def _b64(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def encode_model(record: ModelRecord) -> str:
    return orjson.dumps(
        {
            "deleted": record.deleted,
            "versions": [
                {
                    "number": v.number,
                    "spec": _b64(v.spec),
                    "server": v.server,
                    "state": v.state.value,
                    "reason": v.reason,
                    "timestamp": v.timestamp,
                    "schedule_error": v.schedule_error,
                    "scaled_replicas": v.scaled_replicas,
                    "replicas": {
                        str(idx): [r.state.value, r.reason, r.timestamp] for idx, r in v.replicas.items()
                    },
                }
                for v in record.versions
            ],
        }
    ).decode()


def decode_model(name: str, record: str) -> ModelRecord:
    data = orjson.loads(record)
    versions = []
    for v in data["versions"]:
        spec = scheduler_pb2.Model()
        spec.ParseFromString(base64.b64decode(v["spec"]))
        versions.append(
            ModelVersion(
                v["number"],
                spec,
                server=v["server"],
                replicas={
                    int(idx): ReplicaStatus(ReplicaState(state), reason, stamp)
                    for idx, (state, reason, stamp) in v["replicas"].items()
                },
                state=ModelState(v["state"]),
                reason=v["reason"],
                timestamp=v["timestamp"],
                schedule_error=v["schedule_error"],
                # Absent from records written before autoscaling (no migration needed).
                scaled_replicas=v.get("scaled_replicas"),
            )
        )
    return ModelRecord(name, versions, deleted=data["deleted"])


def encode_server(server: Server) -> str:
    return orjson.dumps(
        {
            "shared": server.shared,
            "expected_replicas": server.expected_replicas,
            "min_replicas": server.min_replicas,
            "max_replicas": server.max_replicas,
            "replicas": {
                str(r.idx): {"config": _b64(r.config), "available_memory": r.available_memory}
                for r in server.replicas.values()
            },
        }
    ).decode()


def decode_server(name: str, record: str) -> Server:
    data = orjson.loads(record)
    server = Server(
        name=name,
        shared=data["shared"],
        expected_replicas=data["expected_replicas"],
        min_replicas=data.get("min_replicas", 0),
        max_replicas=data.get("max_replicas", 0),
    )
    for idx, replica in data["replicas"].items():
        config = agent_pb2.ReplicaConfig()
        config.ParseFromString(base64.b64decode(replica["config"]))
        # Restored replicas are not connected until their agent subscribes again.
        server.replicas[int(idx)] = ServerReplica(
            name,
            int(idx),
            config,
            available_memory=replica["available_memory"],
            connected=False,
            retiring=server.is_retiring(int(idx)),
        )
    return server
