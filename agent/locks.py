"""Per-model locks and the bound on concurrent MLServer operations, shared by everything that
loads, unloads, evicts or reloads a model on this replica.

One lock per versioned model serialises the scheduler's LOAD/UNLOAD (agent/dispatcher.py) with the
on-demand reload of an evicted model (agent/reload.py) and with evicting it to make room. An entry
lives only while someone holds or waits for its lock, so the map holds the models in flight, not
every model ever seen. Event-loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

DEFAULT_MAX_CONCURRENT = 8


@dataclass
class _Entry:
    users: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelLocks:
    def __init__(self, max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent}")
        self._entries: dict[str, _Entry] = {}
        self._slots = asyncio.Semaphore(max_concurrent)

    def is_free(self, name: str) -> bool:
        """Nobody holds or waits for ``name``'s lock: :meth:`hold` would take it without waiting."""
        return name not in self._entries

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        entry = self._entries.setdefault(name, _Entry())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[name]

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the ``max_concurrent`` turns at MLServer's repository API."""
        async with self._slots:
            yield
