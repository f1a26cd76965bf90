"""The state store against real SQLite files: round trips, batching, crashes, failures, migrations.

``data/store_v1.sql`` is a dump of a database written by the first store (schema 1, before kinds
and migrations) holding :func:`sample_models` and :func:`sample_servers`; it must keep restoring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler import store as store_module
from scheduler.state import (
    ModelRecord,
    ModelState,
    ModelVersion,
    ReplicaState,
    ReplicaStatus,
    Server,
    ServerReplica,
)
from scheduler.store import FLUSH_DELAY, StateStore
from scheduler.store_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    ResourceKind,
    SchemaTooNewError,
    StoreError,
    kind_table,
)

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parents[2]
STAMP = 1_700_000_000.125  # exact in binary, so JSON round trips compare equal


# -- samples (also what data/store_v1.sql holds) -----------------------------------------------------


def _spec(name: str, *, replicas: int, memory: int, server: str = "") -> scheduler_pb2.Model:
    spec = scheduler_pb2.ModelSpec(
        uri=f"gs://models/{name}", memoryBytes=memory, requirements=["sklearn"], server=server
    )
    return scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name=name),
        modelSpec=spec,
        deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=replicas, minReplicas=1),
    )


def sample_models() -> dict[str, ModelRecord]:
    iris_1 = ModelVersion(
        1,
        _spec("iris", replicas=1, memory=1000),
        server="mlserver",
        replicas={0: ReplicaStatus(ReplicaState.Draining, "moving", STAMP)},
        state=ModelState.ModelAvailable,
        timestamp=STAMP,
    )
    iris_2 = ModelVersion(
        2,
        _spec("iris", replicas=2, memory=2000),
        server="mlserver",
        replicas={
            0: ReplicaStatus(ReplicaState.Available, "", STAMP + 1),
            1: ReplicaStatus(ReplicaState.Loading, "", STAMP + 2),
        },
        state=ModelState.ModelProgressing,
        reason="1/2 replicas",
        timestamp=STAMP + 3,
    )
    gone = ModelVersion(
        1,
        _spec("gone", replicas=1, memory=10),
        server="mlserver",
        replicas={1: ReplicaStatus(ReplicaState.UnloadRequested, "", STAMP)},
        state=ModelState.ModelTerminating,
        timestamp=STAMP,
    )
    unplaced = ModelVersion(
        1,
        _spec("huge", replicas=3, memory=10**12, server="triton"),
        state=ModelState.ScheduleFailed,
        reason="no server fits",
        timestamp=STAMP,
        schedule_error="not enough memory on triton",
    )
    return {
        "iris": ModelRecord("iris", [iris_1, iris_2]),
        "gone": ModelRecord("gone", [gone], deleted=True),
        "huge": ModelRecord("huge", [unplaced]),
    }


def _replica(server: str, idx: int, *, memory: int, retiring: bool = False) -> ServerReplica:
    config = agent_pb2.ReplicaConfig(
        inferenceSvc=f"{server}-{idx}",
        inferenceHttpPort=8080 + idx,
        inferenceGrpcPort=9500 + idx,
        memoryBytes=memory,
        capabilities=["sklearn", "xgboost"],
        overCommitPercentage=10,
    )
    # As restored: not connected until the agent subscribes again.
    return ServerReplica(
        server, idx, config, available_memory=memory // 2, connected=False, retiring=retiring
    )


def sample_servers() -> dict[str, Server]:
    mlserver = Server(
        "mlserver",
        # Declared one replica, so replica 1 is retiring.
        replicas={
            0: _replica("mlserver", 0, memory=4000),
            1: _replica("mlserver", 1, memory=4000, retiring=True),
        },
        shared=True,
        expected_replicas=1,
        min_replicas=1,
        max_replicas=3,
    )
    triton = Server("triton", replicas={0: _replica("triton", 0, memory=100)}, shared=False)
    return {"mlserver": mlserver, "triton": triton}


# -- helpers -----------------------------------------------------------------------------------------


def _stored(path: Path) -> tuple[dict[str, ModelRecord], dict[str, Server]]:
    """What a scheduler restarted on ``path`` would restore."""
    store = StateStore(path)
    try:
        return store.load()
    finally:
        store.close()


def _bound(path: Path) -> tuple[StateStore, dict[str, ModelRecord], dict[str, Server]]:
    store = StateStore(path)
    models, servers = sample_models(), sample_servers()
    store.bind(lambda: models, lambda: servers)
    return store, models, servers


def _mark_all(store: StateStore, models: dict[str, ModelRecord], servers: dict[str, Server]) -> None:
    for name in models:
        store.model_changed(name)
    for name in servers:
        store.server_changed(name)


def _v1_database(tmp_path: Path) -> Path:
    path = tmp_path / "scheduler.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript((DATA / "store_v1.sql").read_text())
    return path


def _schema_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])


@dataclass
class Flaky:
    """Controls the connections the store opens: counts commits, fails them on demand."""

    fail_commit: bool = False
    commits: int = 0
    commit_delay: float = 0.0  # seconds each COMMIT takes (a slow disk)
    committed_at: list[float] = field(default_factory=list)  # time.monotonic() after each COMMIT


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Flaky:
    control = Flaky()

    class Connection(sqlite3.Connection):
        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            if sql == "COMMIT":
                if control.fail_commit:
                    raise sqlite3.OperationalError("disk I/O error (simulated)")
                control.commits += 1
                time.sleep(control.commit_delay)
                cursor = super().execute(sql, parameters)
                control.committed_at.append(time.monotonic())
                return cursor
            return super().execute(sql, parameters)

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Connection))
    return control


async def _eventually(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- round trip, batching, durability ----------------------------------------------------------------


async def test_models_and_servers_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "scheduler.db"
    store, models, servers = _bound(path)
    _mark_all(store, models, servers)
    store.flush()
    store.close()

    assert _stored(path) == (sample_models(), sample_servers())


async def test_removed_objects_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    _mark_all(store, models, servers)
    store.flush()

    del models["gone"], servers["triton"]
    store.model_changed("gone")
    store.server_changed("triton")
    store.close()  # flushes

    restored_models, restored_servers = _stored(path)
    assert set(restored_models) == {"iris", "huge"}
    assert set(restored_servers) == {"mlserver"}


async def test_changes_are_batched_into_one_transaction(tmp_path: Path, flaky: Flaky) -> None:
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    before = flaky.commits

    _mark_all(store, models, servers)
    models["iris"].latest.set_replica(1, ReplicaState.Available)
    store.model_changed("iris")
    assert flaky.commits == before, "nothing is written before the batch delay"

    await _eventually(lambda: flaky.commits > before)
    await asyncio.sleep(FLUSH_DELAY * 2)
    assert flaky.commits == before + 1
    assert _stored(path) == (models, servers)
    store.close()


async def test_flush_is_durable_at_once(tmp_path: Path) -> None:
    """What the API does before answering: no batch delay."""
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    _mark_all(store, models, servers)

    store.flush()
    assert _stored(path) == (models, servers)
    store.close()


_CRASHING_SCHEDULER = """
import asyncio, os, signal, sys
from pathlib import Path
from scheduler.state import ModelRecord
from scheduler.store import StateStore
from tests.scheduler.test_store import sample_models, sample_servers

async def main() -> None:
    store = StateStore(Path(sys.argv[1]))
    models, servers = sample_models(), sample_servers()
    store.bind(lambda: models, lambda: servers)
    for name in models:
        store.model_changed(name)
    store.flush()
    # The next batch is never written: the process dies inside the batch delay.
    models["late"] = ModelRecord("late")
    del servers["triton"]
    store.model_changed("late")
    store.server_changed("triton")
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_a_crash_loses_only_the_unflushed_batch(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_SCHEDULER, str(path)], cwd=REPO, env=env, timeout=60, check=False
    )
    assert crashed.returncode == -signal.SIGKILL

    models, servers = _stored(path)
    assert models == sample_models(), "the flushed batch survives, the late model does not"
    assert servers == {}, "servers were only ever in the lost batch"


def test_a_store_without_path_keeps_nothing() -> None:
    store = StateStore(None)
    store.bind(sample_models, sample_servers)
    store.model_changed("iris")  # no database: not even a timer (no event loop needed)
    store.flush()
    assert store.load() == ({}, {})
    store.close()


# -- failures ----------------------------------------------------------------------------------------


async def test_a_failed_commit_keeps_its_dirty_records(tmp_path: Path, flaky: Flaky) -> None:
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    _mark_all(store, models, servers)

    flaky.fail_commit = True
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        store.flush()
    flaky.fail_commit = False
    assert _stored(path) == ({}, {}), "the failed transaction was rolled back"

    store.flush()  # nothing new was marked: the failed batch is written now
    assert _stored(path) == (models, servers)
    store.close()


async def test_a_failed_statement_keeps_its_dirty_records(tmp_path: Path) -> None:
    """Another connection makes the writes fail (a real SQLite error, no fakes)."""
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    _mark_all(store, models, servers)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON servers BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            store.flush()
        assert _stored(path) == ({}, {}), "models of the same batch were rolled back too"
        other.execute("DROP TRIGGER refuse")

    store.flush()
    assert _stored(path) == (models, servers)
    store.close()


@pytest.mark.parametrize("inline_names", [8, 0], ids=["on the event loop", "on the writer thread"])
async def test_a_failed_timed_flush_is_retried(
    tmp_path: Path, flaky: Flaky, monkeypatch: pytest.MonkeyPatch, inline_names: int
) -> None:
    monkeypatch.setattr(store_module, "RETRY_DELAY", 0.1)
    monkeypatch.setattr(store_module, "INLINE_NAMES", inline_names)
    path = tmp_path / "scheduler.db"
    store, models, servers = _bound(path)
    before = flaky.commits
    flaky.fail_commit = True
    _mark_all(store, models, servers)
    await asyncio.sleep(FLUSH_DELAY * 2)  # the timed flush has failed by now

    flaky.fail_commit = False
    await _eventually(lambda: flaky.commits > before)  # the retry, with no new change
    assert _stored(path) == (models, servers)
    store.close()


# -- schema versions and migrations ------------------------------------------------------------------


def test_a_schema_1_database_opens_and_restores(tmp_path: Path) -> None:
    path = _v1_database(tmp_path)

    models, servers = _stored(path)

    assert models == sample_models()
    assert servers == sample_servers()
    assert models["iris"].latest.replicas[1] == ReplicaStatus(ReplicaState.Loading, "", STAMP + 2)
    assert [v.number for v in models["iris"].versions] == [1, 2]
    assert servers["mlserver"].replicas[1].retiring
    assert _schema_version(path) == SCHEMA_VERSION


def test_a_fresh_database_gets_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.db"
    StateStore(path).close()
    assert _schema_version(path) == SCHEMA_VERSION
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = _v1_database(tmp_path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))

    with pytest.raises(SchemaTooNewError, match=rf"schema version {SCHEMA_VERSION + 1}.*newer meshserve"):
        StateStore(path)
    assert _schema_version(path) == SCHEMA_VERSION + 1, "a refused database is left as it was"


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    skipping = (*MIGRATIONS, Migration(SCHEMA_VERSION + 2, "gap", ()))
    with pytest.raises(ValueError, match="numbered"):
        StateStore(tmp_path / "scheduler.db", migrations=skipping)


@dataclass
class Note:
    text: str


NOTES = ResourceKind[Note](
    "notes",
    encode=lambda note: json.dumps({"text": note.text}),
    decode=lambda _name, record: Note(json.loads(record)["text"]),
)
WITH_NOTES = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "notes", (kind_table("notes"),)))


async def test_a_new_kind_migrates_an_older_database_and_round_trips(tmp_path: Path) -> None:
    path = _v1_database(tmp_path)  # has no notes table

    store = StateStore(path, migrations=WITH_NOTES)
    notes = {"hello": Note("world"), "bye": Note("now")}
    store.register(NOTES, lambda: notes)
    assert store.load_kind(NOTES) == {}
    for name in notes:
        store.changed(NOTES, name)
    store.close()

    reopened = StateStore(path, migrations=WITH_NOTES)
    reopened.register(NOTES, dict)
    assert reopened.load_kind(NOTES) == notes
    assert reopened.load() == (sample_models(), sample_servers()), "older kinds are untouched"
    reopened.close()
    assert _schema_version(path) == SCHEMA_VERSION + 1
    with pytest.raises(SchemaTooNewError):
        StateStore(path)  # a scheduler that predates notes refuses this file


def test_a_kind_without_its_migration_is_rejected(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "scheduler.db")
    with pytest.raises(StoreError, match="add a migration"):
        store.register(NOTES, dict)
    with pytest.raises(StoreError, match="not registered"):
        store.load_kind(NOTES)
    store.close()
