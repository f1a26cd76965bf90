"""Which assigned models are in MLServer's memory: eviction to make room, reload on demand.

A load that needs room evicts the least recently used resident models (unloaded from MLServer,
artifact kept on disk) until ``memory_bytes`` holds it; a request for an evicted model reloads it
(:meth:`Residency.ensure_resident`, called by agent/reload.py). Both run under the model's lock in
agent/locks.py, the one the scheduler's LOAD/UNLOAD take, so an eviction, a reload and an unload
of one model never interleave.

A model with requests in flight is never chosen for eviction. Requests reach MLServer from Envoy
directly (decision 0003), so the agent asks whoever sees them (:class:`InFlightSource`): Envoy's
admin (agent/inflight.py: per-cluster and per-route counts) and its own reload forwarder.
When a source cannot answer, nothing is evicted (the load fails with "no room" rather than risk a
request). Decision 0014 has the alternatives and the remaining check-then-unload window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from agent.errors import AgentError
from agent.locks import ModelLocks
from agent.mlserver import MLServerClient
from agent.state import ReplicaState, model_cost

# How long a load or reload waits for room before it fails, and how often it looks meanwhile.
ROOM_WAIT_S = 30.0
ROOM_POLL_S = 0.2


class NoRoom(AgentError):
    """Not enough memory could be freed: every resident model is busy or has requests in flight."""


class NotAssigned(Exception):
    """A reload was asked for a model this replica does not hold."""


class InFlightSource(Protocol):
    async def active(self) -> dict[str, int] | None:
        """Requests in flight per versioned name (absent: none); None when it cannot tell."""
        ...


async def _no_refresh() -> None:
    return None


class Residency:
    """Evicts and reloads models on this replica's MLServer; see the module docstring."""

    def __init__(
        self,
        *,
        mlserver: MLServerClient,
        state: ReplicaState,
        locks: ModelLocks,
        busy: set[str],
        logger: FilteringBoundLogger,
        in_flight: Sequence[InFlightSource] = (),
        refresh_usage: Callable[[], Awaitable[None]] = _no_refresh,
        room_wait_s: float = ROOM_WAIT_S,
    ) -> None:
        self._mlserver = mlserver
        self._state = state
        self._locks = locks
        self._busy = busy
        self._log = logger
        self._in_flight = list(in_flight)
        self.refresh_usage = refresh_usage
        self._room_wait_s = room_wait_s
        self._changed = asyncio.Event()  # set (and replaced) whenever a reservation or eviction ends

    def add_in_flight_source(self, source: InFlightSource) -> None:
        self._in_flight.append(source)

    @contextlib.asynccontextmanager
    async def room_for(self, name: str, cost: int) -> AsyncIterator[None]:
        """Make room for ``cost`` bytes and hold it reserved while the block loads ``name``."""
        await self._make_room(name, cost)
        self._state.reserved += cost  # no await since the last has_room(): nobody took it meanwhile
        try:
            yield
        finally:
            self._state.reserved -= cost
            self._notify()  # a load waiting for these bytes to become evictable looks again

    async def ensure_resident(self, name: str) -> bool:
        """Load ``name`` if it was evicted; returns whether it had to. Raises :class:`NotAssigned`
        for a model this replica does not hold, an AgentError when the reload failed."""
        if self._state.is_resident(name):
            self._state.touch(name)
            return False
        if name not in self._state:
            raise NotAssigned(name)
        self._state.misses += 1
        async with self._locks.hold(name):
            model_version = self._state.get(name)
            if model_version is None:
                raise NotAssigned(name)  # unloaded while this request waited
            if not self._state.is_resident(name):  # else a concurrent request reloaded it
                async with self._locks.slot():
                    await self._reload(name, model_cost(model_version))
        self._state.touch(name)
        return True

    async def _reload(self, name: str, cost: int) -> None:
        self._busy.add(name)
        try:
            async with self.room_for(name, cost):
                await self._mlserver.load(name)
            self._state.set_resident(name)
            self._log.info("evicted model reloaded", served_name=name)
        finally:
            self._busy.discard(name)

    async def _make_room(self, name: str, cost: int) -> None:
        """Evict until ``cost`` fits. What blocks an eviction passes (loads in progress whose bytes
        are not evictable yet, evictions under way, requests in flight): on "no room", look again
        whenever a reservation or an eviction ends (at least every ROOM_POLL_S), for at most
        ``room_wait_s``, and fail only then."""
        deadline = time.monotonic() + self._room_wait_s
        while True:
            changed = self._changed
            try:
                await self._evict_for(name, cost)
                return
            except NoRoom:
                if time.monotonic() >= deadline:
                    raise
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ROOM_POLL_S):
                    await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _evict_for(self, name: str, cost: int) -> None:
        if self._state.has_room(cost):
            return
        active: dict[str, int] | None = {}
        # No I/O while nothing could be evicted anyway (a load waiting for room asks again and
        # again): the usage refresh and Envoy's in-flight counts only ever rule victims out.
        if any(self._could_evict(victim, name) for victim in self._state.eviction_order()):
            await self.refresh_usage()
            active = await self._active()
            for victim in self._state.eviction_order():
                if self._state.has_room(cost):
                    return
                if not self._could_evict(victim, name) or active is None or active.get(victim, 0) > 0:
                    continue
                await self._evict(victim)
        if not self._state.has_room(cost):
            why = "in-flight requests are unknown" if active is None else "the others are in use"
            raise NoRoom(
                f"no room for {name} ({cost} bytes): {self._state.resident_bytes()} of "
                f"{self._state.memory_bytes} bytes resident and {why}"
            )

    def _could_evict(self, victim: str, name: str) -> bool:
        """Resident, not the model being made room for, and neither loading nor locked."""
        return victim != name and victim not in self._busy and self._locks.is_free(victim)

    async def _evict(self, victim: str) -> None:
        async with self._locks.hold(victim):  # free (checked by the caller): taken at once
            if not self._state.is_resident(victim):
                return
            self._busy.add(victim)
            try:
                await self._mlserver.unload(victim)
            except AgentError as exc:
                self._log.warning("eviction failed; model stays resident", served_name=victim, error=str(exc))
                return
            finally:
                self._busy.discard(victim)
                self._notify()
            self._state.set_evicted(victim)
            self._state.evictions += 1
            self._log.info("model evicted", served_name=victim)

    async def _active(self) -> dict[str, int] | None:
        total: dict[str, int] = {}
        for source in self._in_flight:
            counts = await source.active()
            if counts is None:
                return None
            for served, count in counts.items():
                total[served] = total.get(served, 0) + count
        return total
