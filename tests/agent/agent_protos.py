"""Builders for the agent protocol messages the tests send (importable by any test module)."""

from __future__ import annotations

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2


def model_version(
    name: str,
    version: int,
    uri: str,
    *,
    requirements: tuple[str, ...] = ("sklearn",),
    memory_bytes: int | None = None,
) -> agent_pb2.ModelVersion:
    spec = scheduler_pb2.ModelSpec(uri=uri, requirements=list(requirements), memoryBytes=memory_bytes)
    model = scheduler_pb2.Model(meta=scheduler_pb2.MetaData(name=name), modelSpec=spec)
    return agent_pb2.ModelVersion(model=model, version=version)


def load_op(mv: agent_pb2.ModelVersion) -> agent_pb2.ModelOperationMessage:
    return agent_pb2.ModelOperationMessage(
        operation=agent_pb2.ModelOperationMessage.LOAD_MODEL, modelVersion=mv
    )


def unload_op(mv: agent_pb2.ModelVersion) -> agent_pb2.ModelOperationMessage:
    return agent_pb2.ModelOperationMessage(
        operation=agent_pb2.ModelOperationMessage.UNLOAD_MODEL, modelVersion=mv
    )
