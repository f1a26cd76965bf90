"""What this replica holds, and the free memory it reports to the scheduler."""

from __future__ import annotations

from apis import names
from apis.mlops.agent import agent_pb2

# MLServer runs one copy of each model per replica; kept explicit to match the reference formula.
INSTANCE_COUNT = 1


def versioned_name(model_version: agent_pb2.ModelVersion) -> str:
    """The name the model is served under on MLServer: ``<model>_<version>``."""
    return names.versioned_name(model_version.model.meta.name, model_version.version)


def model_cost(model_version: agent_pb2.ModelVersion) -> int:
    return model_version.model.modelSpec.memoryBytes * INSTANCE_COUNT


class ReplicaState:
    """Assigned models and memory accounting (Seldon's agent memory accounting, no LRU eviction).

    Owned by the event loop: mutate it only from coroutines, never from threads.
    """

    def __init__(self, *, memory_bytes: int, overcommit_percentage: int) -> None:
        self.memory_bytes = memory_bytes
        self.overcommit_percentage = overcommit_percentage
        self._assigned: dict[str, agent_pb2.ModelVersion] = {}

    @property
    def capacity_bytes(self) -> int:
        """How much the scheduler may assign: memory plus over-commit headroom."""
        return self.memory_bytes + self.memory_bytes * self.overcommit_percentage // 100

    def available_bytes(self) -> int:
        used = sum(model_cost(model_version) for model_version in self._assigned.values())
        return max(0, self.capacity_bytes - used)

    def add(self, model_version: agent_pb2.ModelVersion) -> None:
        copy = agent_pb2.ModelVersion()
        copy.CopyFrom(model_version)
        self._assigned[versioned_name(model_version)] = copy

    def remove(self, name: str) -> agent_pb2.ModelVersion | None:
        return self._assigned.pop(name, None)

    def get(self, name: str) -> agent_pb2.ModelVersion | None:
        return self._assigned.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._assigned

    def loaded_models(self) -> list[agent_pb2.ModelVersion]:
        return list(self._assigned.values())
