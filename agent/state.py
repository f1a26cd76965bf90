"""What this replica holds, which of it is in memory, and the free memory it reports.

Seldon's agent memory accounting (reference §5.4): the scheduler may assign up to
``memory * (1 + overcommit/100)``; at most ``memory`` of it is resident on MLServer at once. The
rest is *evicted*: still assigned and on disk, unloaded from MLServer, reloaded on its next request
(agent/reload.py). The least recently used resident model is evicted first.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
    """Assigned models, which are resident, when each was last used, and memory accounting.

    Owned by the event loop: mutate it only from coroutines, never from threads. ``reserved`` is
    memory promised to loads in progress, so two loads never both count the same free bytes.
    """

    def __init__(
        self, *, memory_bytes: int, overcommit_percentage: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.memory_bytes = memory_bytes
        self.overcommit_percentage = overcommit_percentage
        self._clock = clock
        self._assigned: dict[str, agent_pb2.ModelVersion] = {}
        self._resident: set[str] = set()
        self._resident_bytes = 0  # kept as it changes: has_room() runs on every load
        self._assigned_bytes = 0  # likewise: every event reports the free memory
        self._last_used: dict[str, float] = {}  # wall-clock seconds, for ReplicaStatus and LRU
        self.reserved = 0
        self.evictions = 0  # seldon_cache_evict_count
        self.misses = 0  # seldon_cache_miss_count: requests that found their model evicted

    @property
    def capacity_bytes(self) -> int:
        """How much the scheduler may assign: memory plus over-commit headroom."""
        return self.memory_bytes + self.memory_bytes * self.overcommit_percentage // 100

    def available_bytes(self) -> int:
        return max(0, self.capacity_bytes - self._assigned_bytes)

    def resident_bytes(self) -> int:
        return self._resident_bytes

    def evicted_bytes(self) -> int:
        return sum(model_cost(mv) for name, mv in self._assigned.items() if name not in self._resident)

    def has_room(self, cost: int) -> bool:
        return self.resident_bytes() + self.reserved + cost <= self.memory_bytes

    def add(self, model_version: agent_pb2.ModelVersion, *, resident: bool = True) -> None:
        copy = agent_pb2.ModelVersion()
        copy.CopyFrom(model_version)
        name = versioned_name(model_version)
        self.set_evicted(name)  # a replaced entry's bytes leave with it
        replaced = self._assigned.get(name)
        if replaced is not None:
            self._assigned_bytes -= model_cost(replaced)
        self._assigned[name] = copy
        self._assigned_bytes += model_cost(copy)
        self._last_used.setdefault(name, self._clock())
        if resident:
            self.set_resident(name)

    def remove(self, name: str) -> agent_pb2.ModelVersion | None:
        self.set_evicted(name)
        self._last_used.pop(name, None)
        removed = self._assigned.pop(name, None)
        if removed is not None:
            self._assigned_bytes -= model_cost(removed)
        return removed

    def get(self, name: str) -> agent_pb2.ModelVersion | None:
        return self._assigned.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._assigned

    def is_resident(self, name: str) -> bool:
        return name in self._resident

    def set_evicted(self, name: str) -> None:
        if name in self._resident:
            self._resident.discard(name)
            self._resident_bytes -= model_cost(self._assigned[name])

    def set_resident(self, name: str) -> None:
        if name in self._assigned and name not in self._resident:
            self._resident.add(name)
            self._resident_bytes += model_cost(self._assigned[name])

    def touch(self, name: str) -> None:
        if name in self._assigned:
            self._last_used[name] = self._clock()

    def last_used(self, name: str) -> float | None:
        return self._last_used.get(name)

    def eviction_order(self) -> list[str]:
        """Resident models, least recently used first."""
        return sorted(self._resident, key=lambda name: (self._last_used.get(name, 0.0), name))

    def loaded_models(self) -> list[agent_pb2.ModelVersion]:
        """Every assigned model, resident or evicted: what the scheduler placed here."""
        return list(self._assigned.values())

    def resident_names(self) -> list[str]:
        return sorted(self._resident)

    def evicted_names(self) -> list[str]:
        return sorted(name for name in self._assigned if name not in self._resident)
