"""Issue 8 item 8: API commits are fsynced (synchronous=FULL), timed batches are not; small timed
batches commit on the event loop and never checkpoint there (decision 0033); a corrupt state
database stops the scheduler with one clear message and exit code FATAL_CONFIG."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from apis.exits import FATAL_CONFIG
from scheduler import store as store_module
from scheduler.store import FLUSH_DELAY, StateStore
from scheduler.store_schema import StateCorruptError
from tests.scheduler.test_store import REPO, _bound, _stored


@pytest.fixture
def synchronous_at_commit(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The connection's ``synchronous`` level at each COMMIT (1 NORMAL, 2 FULL)."""
    levels: list[int] = []

    class Connection(sqlite3.Connection):
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if sql == "COMMIT":
                levels.append(super().execute("PRAGMA synchronous").fetchone()[0])
            return super().execute(sql, parameters)

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Connection))
    return levels


async def test_api_commits_are_full_and_timed_batches_normal(
    tmp_path: Path, synchronous_at_commit: list[int]
) -> None:
    store, models, _ = _bound(tmp_path / "scheduler.db")
    synchronous_at_commit.clear()  # the migration's

    store.model_changed("iris")  # agent-reported state: the timed batch
    await asyncio.sleep(FLUSH_DELAY * 4)
    assert synchronous_at_commit == [1]

    # An API call with nothing of its own left dirty still makes the earlier batch durable.
    await store.group_commit()
    assert synchronous_at_commit == [1, 2]
    await store.group_commit()  # nothing unsynced: no commit at all
    assert synchronous_at_commit == [1, 2]

    store.model_changed(next(iter(models)))
    await store.group_commit()
    assert synchronous_at_commit == [1, 2, 2]
    store.close()


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """Per COMMIT: whether it ran on the event loop's thread, and the WAL's auto-checkpoint pages."""
    seen: list[tuple[bool, int]] = []

    class Connection(sqlite3.Connection):
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if sql == "COMMIT":
                pages = super().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
                seen.append((threading.current_thread() is threading.main_thread(), pages))
            return super().execute(sql, parameters)

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Connection))
    return seen


async def test_a_small_timed_batch_commits_on_the_loop_and_a_large_one_on_the_writer_thread(
    tmp_path: Path, commits: list[tuple[bool, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "INLINE_NAMES", 2)
    store, models, _ = _bound(tmp_path / "scheduler.db")
    commits.clear()  # the migration's

    store.model_changed("iris")
    await asyncio.sleep(FLUSH_DELAY * 4)
    assert commits == [(True, 0)], "inline, and no checkpoint (its fsync) on the event loop"

    for name in models:  # three names: more than INLINE_NAMES
        store.model_changed(name)
    await asyncio.sleep(FLUSH_DELAY * 4)
    assert commits[1:] == [(False, store_module.AUTOCHECKPOINT_PAGES)]
    store.close()
    assert _stored(tmp_path / "scheduler.db")[0] == models


async def test_after_a_run_of_inline_commits_the_writer_thread_commits_and_checkpoints(
    tmp_path: Path, commits: list[tuple[bool, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "INLINE_COMMITS_PER_CHECKPOINT", 2)
    store, _, _ = _bound(tmp_path / "scheduler.db")
    commits.clear()

    for _ in range(4):
        store.model_changed("iris")
        await asyncio.sleep(FLUSH_DELAY * 3)
    assert [on_loop for on_loop, _ in commits] == [True, True, False, True]
    store.close()


def test_a_file_that_is_not_a_database_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateCorruptError) as caught:
        StateStore(path)
    assert str(path) in str(caught.value) and f"mv {path} {path}.corrupt" in str(caught.value)


async def test_a_damaged_page_is_found_on_open(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    store, _, _ = _bound(path)
    for name in ("iris", "mnist", "big"):
        store.model_changed(name)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : 2 * page] = b"\xff" * page  # the second page: a table's b-tree
    path.write_bytes(bytes(data))
    with pytest.raises(StateCorruptError, match="is corrupt"):
        StateStore(path).load()


def test_an_unreadable_record_is_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    StateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO models VALUES ('iris', 'not json')")
    store = StateStore(path)
    with pytest.raises(StateCorruptError, match="models record 'iris'"):
        store.load()
    store.close()


def test_the_scheduler_exits_fatal_config_with_one_message(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "scheduler.db").write_bytes(b"garbage" * 1000)
    ran = subprocess.run(
        [sys.executable, "-m", "scheduler", f"--state-dir={state}", "--scheduler-port=0", "--agent-port=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == FATAL_CONFIG, ran.stderr
    assert "Traceback" not in ran.stderr
    errors = [line for line in ran.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1 and "is corrupt" in errors[0] and "scheduler.db" in errors[0], ran.stderr
