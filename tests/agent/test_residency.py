"""LRU eviction and on-demand reload (agent/residency.py) against a fake MLServer that records calls."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import structlog

from agent.errors import MLServerError
from agent.locks import ModelLocks
from agent.mlserver import MLServerClient
from agent.residency import NoRoom, NotAssigned, Residency
from agent.state import ReplicaState
from tests.agent.agent_protos import model_version


class FakeMLServer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_unload: set[str] = set()
        self.gate: asyncio.Event | None = None

    async def load(self, name: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append(("load", name))

    async def unload(self, name: str) -> None:
        if name in self.fail_unload:
            raise MLServerError("refused", status=500)
        self.calls.append(("unload", name))


class Counts:
    def __init__(self, counts: dict[str, int] | None) -> None:
        self.counts = counts

    async def active(self) -> dict[str, int] | None:
        return self.counts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def setup(
    memory: int = 3, *, in_flight: dict[str, int] | None = None
) -> tuple[Residency, ReplicaState, FakeMLServer]:
    state = ReplicaState(memory_bytes=memory, overcommit_percentage=100, clock=Clock())
    mlserver = FakeMLServer()
    residency = Residency(
        mlserver=cast(MLServerClient, mlserver),
        state=state,
        locks=ModelLocks(),
        busy=set(),
        logger=structlog.get_logger(),
        in_flight=[Counts(in_flight if in_flight is not None else {})],
        room_wait_s=0.3,
    )
    for name in ("a", "b", "c"):
        state.add(model_version(name, 1, "x", memory_bytes=1))
    return residency, state, mlserver


async def test_a_load_needing_room_evicts_the_least_recently_used() -> None:
    residency, state, mlserver = setup()
    state.touch("a_1")  # b is now the least recently used
    async with residency.room_for("d_1", 1):
        pass
    assert mlserver.calls == [("unload", "b_1")]
    assert state.evicted_names() == ["b_1"] and state.evictions == 1


async def test_a_model_with_requests_in_flight_is_skipped() -> None:
    residency, state, mlserver = setup(in_flight={"a_1": 2})
    async with residency.room_for("d_1", 1):
        pass
    assert mlserver.calls == [("unload", "b_1")]
    assert state.is_resident("a_1")


async def test_unknown_in_flight_evicts_nothing() -> None:
    residency, state, mlserver = setup(in_flight=None)
    residency._in_flight = [Counts(None)]
    with pytest.raises(NoRoom, match="in-flight requests are unknown"):
        async with residency.room_for("d_1", 1):
            pass
    assert mlserver.calls == [] and state.reserved == 0


async def test_every_model_in_use_means_no_room() -> None:
    residency, _state, _ = setup(in_flight={"a_1": 1, "b_1": 1, "c_1": 1})
    with pytest.raises(NoRoom, match="in use"):
        async with residency.room_for("d_1", 1):
            pass


async def test_a_load_waits_for_a_request_in_flight_to_end() -> None:
    counts = {"a_1": 1, "b_1": 1, "c_1": 1}
    residency, state, _ = setup(in_flight=counts)
    residency._room_wait_s = 10.0
    loading = asyncio.create_task(residency.room_for("d_1", 1).__aenter__())
    await asyncio.sleep(0.05)
    assert not loading.done()
    del counts["b_1"]  # b's request answered: evictable at the next look
    await asyncio.wait_for(loading, 5)
    assert not state.is_resident("b_1") and state.is_resident("a_1")


async def test_a_failed_eviction_keeps_the_model_and_tries_the_next() -> None:
    residency, state, mlserver = setup()
    mlserver.fail_unload.add("a_1")
    async with residency.room_for("d_1", 1):
        pass
    assert state.is_resident("a_1") and not state.is_resident("b_1")


async def test_a_model_whose_lock_is_held_is_not_evicted() -> None:
    residency, state, _ = setup()
    locks = residency._locks
    async with locks.hold("a_1"), residency.room_for("d_1", 1):
        pass
    assert state.is_resident("a_1") and not state.is_resident("b_1")


async def test_reload_of_an_evicted_model_counts_a_miss_and_evicts_another() -> None:
    residency, state, mlserver = setup()
    state.set_evicted("a_1")
    state.add(model_version("d", 1, "x", memory_bytes=1))  # now full again: b, c, d resident
    assert await residency.ensure_resident("a_1") is True
    assert state.is_resident("a_1") and state.misses == 1 and state.resident_bytes() == 3
    assert ("load", "a_1") in mlserver.calls
    assert await residency.ensure_resident("a_1") is False  # resident: no second load


async def test_concurrent_requests_for_an_evicted_model_reload_it_once() -> None:
    residency, state, mlserver = setup()
    state.set_evicted("a_1")
    mlserver.gate = asyncio.Event()
    calls = [asyncio.create_task(residency.ensure_resident("a_1")) for _ in range(5)]
    await asyncio.sleep(0)
    mlserver.gate.set()
    await asyncio.gather(*calls)
    assert mlserver.calls.count(("load", "a_1")) == 1 and state.misses == 5


async def test_reload_of_a_model_not_assigned_is_refused() -> None:
    residency, _, mlserver = setup()
    with pytest.raises(NotAssigned):
        await residency.ensure_resident("zzz_1")
    assert mlserver.calls == []


def test_state_accounting_and_lru_order() -> None:
    state = ReplicaState(memory_bytes=10, overcommit_percentage=20, clock=Clock())
    for name in ("a", "b"):
        state.add(model_version(name, 1, "x", memory_bytes=4))
    state.add(model_version("c", 1, "x", memory_bytes=4), resident=False)
    assert state.resident_bytes() == 8 and state.evicted_bytes() == 4 and state.available_bytes() == 0
    assert not state.has_room(4) and state.has_room(2)
    state.touch("a_1")
    assert state.eviction_order() == ["b_1", "a_1"]
    state.add(model_version("a", 1, "x", memory_bytes=2))  # replaced: its old bytes leave
    assert state.resident_bytes() == 6
    state.remove("a_1")
    assert state.resident_bytes() == 4 and state.last_used("a_1") is None
    assert state.evicted_names() == ["c_1"] and state.resident_names() == ["b_1"]


async def test_a_load_waits_for_loads_in_progress_to_become_evictable() -> None:
    state = ReplicaState(memory_bytes=1, overcommit_percentage=100, clock=Clock())
    mlserver = FakeMLServer()
    residency = Residency(
        mlserver=cast(MLServerClient, mlserver),
        state=state,
        locks=ModelLocks(),
        busy=set(),
        logger=structlog.get_logger(),
    )
    release = asyncio.Event()

    async def first() -> None:
        async with residency.room_for("a_1", 1):
            await release.wait()
            state.add(model_version("a", 1, "x", memory_bytes=1))

    loading = asyncio.create_task(first())
    await asyncio.sleep(0)
    second = asyncio.create_task(residency.room_for("b_1", 1).__aenter__())
    await asyncio.sleep(0.01)
    assert not second.done()  # a_1 is reserved, not yet evictable: b waits instead of failing
    release.set()
    await loading
    await second
    assert mlserver.calls == [("unload", "a_1")] and state.reserved == 1
