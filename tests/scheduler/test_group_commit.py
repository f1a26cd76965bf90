"""Group commit: API calls of one event-loop turn share one SQLite commit, and each returns only
once its change is durable (or raises what the commit raised, forgetting nothing)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.state import ReplicaState
from scheduler.store import StateStore
from tests.scheduler.test_store import Flaky, _bound, _stored, flaky  # noqa: F401 - fixture


async def test_callers_of_one_turn_share_one_commit(tmp_path: Path, flaky: Flaky) -> None:  # noqa: F811
    path = tmp_path / "scheduler.db"
    store, models, _servers = _bound(path)
    before = flaky.commits

    committed: list[int] = []

    async def api_call(name: str) -> None:
        store.model_changed(name)
        await store.group_commit()
        committed.append(flaky.commits)

    await asyncio.gather(*(api_call(name) for name in models))
    assert committed == [before + 1] * len(models)  # each returned once the one commit was done
    assert set(_stored(path)[0]) == set(models)
    store.close()


async def test_a_failed_commit_fails_every_caller_and_keeps_the_changes(
    tmp_path: Path,
    flaky: Flaky,  # noqa: F811
) -> None:
    path = tmp_path / "scheduler.db"
    store, models, _servers = _bound(path)
    flaky.fail_commit = True

    async def api_call(name: str) -> None:
        store.model_changed(name)
        await store.group_commit()

    results = await asyncio.gather(*(api_call(name) for name in models), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)

    flaky.fail_commit = False
    await store.group_commit()  # the next commit writes what the failed one could not
    assert set(_stored(path)[0]) == set(models)
    store.close()


async def test_a_cancelled_caller_does_not_cancel_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    store, models, _servers = _bound(path)
    models["iris"].latest.set_replica(1, ReplicaState.Available)
    store.model_changed("iris")
    store.model_changed("huge")
    first = asyncio.create_task(store.group_commit())
    second = asyncio.create_task(store.group_commit())
    await asyncio.sleep(0)
    first.cancel()
    await second
    with pytest.raises(asyncio.CancelledError):
        await first
    assert {"iris", "huge"} <= set(_stored(path)[0])
    store.close()


async def test_without_a_database_it_returns_at_once() -> None:
    await StateStore(None).group_commit()


async def test_callers_arriving_during_a_commit_share_the_next_one(
    tmp_path: Path,
    flaky: Flaky,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "scheduler.db"
    store, _models, _servers = _bound(path)
    commit = StateStore._commit

    def slow_commit(self: StateStore, batch: Any) -> None:
        time.sleep(0.05)  # the writer thread; the event loop keeps serving meanwhile
        commit(self, batch)

    monkeypatch.setattr(StateStore, "_commit", slow_commit)
    before = flaky.commits

    async def api_call(delay: float) -> None:
        await asyncio.sleep(delay)
        store.model_changed("iris")
        await store.group_commit()

    await asyncio.gather(*(api_call(0.005 * i) for i in range(20)))  # spread over 0.1 s
    assert flaky.commits - before <= 4  # not 20: one in flight, the rest gather behind it
    assert set(_stored(path)[0]) == {"iris"}
    store.close()


async def test_committing_waits_for_the_commit_in_flight_and_not_for_later_ones(
    tmp_path: Path,
    flaky: Flaky,  # noqa: F811
) -> None:
    path = tmp_path / "scheduler.db"
    store, models, _servers = _bound(path)
    first_name, second_name = list(models)[:2]
    await asyncio.wait_for(store.committing(), 0.05)  # nothing in flight: at once
    flaky.commit_delay = 0.2
    store.model_changed(first_name)
    first = asyncio.create_task(store.group_commit())
    await asyncio.sleep(0.05)  # the first commit is in flight
    waiter = asyncio.create_task(store.committing())
    store.model_changed(second_name)
    second = asyncio.create_task(store.group_commit())  # asked for behind it
    await waiter
    assert first.done() and not second.done()  # bounded: the API staying busy does not hold it
    await second
    store.close()


async def test_committing_returns_when_the_commit_failed_and_its_callers_hear_of_it(
    tmp_path: Path,
    flaky: Flaky,  # noqa: F811
) -> None:
    path = tmp_path / "scheduler.db"
    store, models, _servers = _bound(path)
    flaky.fail_commit = True
    flaky.commit_delay = 0.1
    store.model_changed(next(iter(models)))
    call = asyncio.create_task(store.group_commit())
    await asyncio.sleep(0.05)  # in flight
    await store.committing()
    with pytest.raises(sqlite3.OperationalError):
        await call
    flaky.fail_commit = False
    store.close()
