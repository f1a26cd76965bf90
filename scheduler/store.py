"""Persistent scheduler state in SQLite (stdlib, WAL mode) in the state directory.

What is kept: every object of every registered :class:`ResourceKind`. Today that is models (every
version with its spec, server, replica states and model state) and servers (their replicas'
configs and declared counts): enough for a restarted scheduler to publish the very same Envoy
configuration before any agent has reconnected, so the data plane never notices.

What is durable when:

* ``changed`` (and ``model_changed``/``server_changed``) only marks a name dirty; one transaction
  writes every dirty name of every kind ``FLUSH_DELAY`` later, so a burst of 10,000 loads is not
  10,000 commits. A crash inside that window loses those changes; they are agent-reported state,
  which agents report again when they reconnect. A batch of a few names (an isolated change)
  commits on the event loop, with no fsync and no WAL checkpoint; larger ones, and one after every
  ``INLINE_COMMITS_PER_CHECKPOINT`` inline ones, go to the writer thread (decision 0033).
* ``flush`` writes everything dirty now and returns once it is committed. ``group_commit`` is
  its asynchronous form, a group commit: the rows are encoded on the event loop, committed by one
  writer thread, and every caller that arrives while a commit is in flight joins the next one
  (64 concurrent LoadModel calls share a few commits, not 64, and the event loop never waits for
  the disk). API calls await it before they answer, so nothing a client was told is accepted can
  be lost. One commit is in flight at a time, so commits land in the order they were encoded. These
  commits are durable across power loss (``synchronous=FULL``: the WAL is fsynced, and with it
  every earlier timed batch); timed batches use ``NORMAL`` (no fsync; safe against a crash of the
  scheduler, not of the machine). docs/benchmarks.md has the cost. ``committing`` waits for the
  durable commit in flight, if any: agent operations wait for it (decision 0031).
* A damaged file (or one that is not a meshserve database) is refused on open with
  :class:`StateCorruptError`, one message saying what to do; ``python -m scheduler`` then exits
  with :data:`apis.exits.FATAL_CONFIG`, which the local stack's supervisor does not restart.
* A flush that fails (raises ``sqlite3.Error``) rolls back and keeps every dirty name for the next
  flush; a failed timed flush retries after ``RETRY_DELAY``.
* ``close`` flushes, then closes.

The schema (one table per kind) and its migrations are in :mod:`scheduler.store_schema`.

Contract: one owner (:class:`scheduler.core.Scheduler`) calls ``register``/``bind``, ``changed``
and ``flush`` on the event loop; ``load``/``load_kind`` are called once, before serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from scheduler import records
from scheduler.state import (
    ModelRecord,
    Server,
)
from scheduler.store_schema import (
    MIGRATIONS,
    Migration,
    ResourceKind,
    StoreError,
    corrupt,
    has_table,
    open_database,
    transaction,
)

FLUSH_DELAY = 0.05  # seconds between the first change and the batch that writes it
RETRY_DELAY = 1.0  # seconds before a failed timed flush is tried again
# A timed batch of at most this many names commits on the event loop: without an fsync or a
# checkpoint it costs less there than the hand-off to the writer thread and back (decision 0033).
INLINE_NAMES = 8
# Inline commits never checkpoint the WAL; after this many in a row the next timed batch goes to the
# writer thread, whose commits do (SQLite's default threshold), so the WAL stays bounded.
INLINE_COMMITS_PER_CHECKPOINT = 256
AUTOCHECKPOINT_PAGES = 1000  # SQLite's default

log = structlog.get_logger("meshserve.scheduler.store")
T = TypeVar("T")


# -- the store -----------------------------------------------------------------------------------------


@dataclass
class _Binding:
    """A registered kind, where its live objects are read from, and its names not yet written."""

    kind: ResourceKind[Any]
    current: Callable[[], Mapping[str, Any]]
    dirty: set[str] = field(default_factory=set)


class StateStore:
    """The scheduler's persistent state: registered kinds, dirty names, timed and group commits
    (on one writer thread, small timed ones inline), and loading on start (the rules are in the
    module docstring)."""

    def __init__(self, path: Path | None, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        """Open (creating or migrating) the database at ``path``; ``None`` keeps nothing (tests,
        throwaway runs). ``migrations`` is for tests of future schemas."""
        self._path = path
        self._db = None if path is None else open_database(path, migrations)
        self._bindings: dict[str, _Binding] = {}
        self._timer: asyncio.TimerHandle | None = None
        # Callers waiting for the next background commit, and the one in flight (at most one).
        self._group: asyncio.Future[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._committing: asyncio.Future[None] | None = None  # the group of a durable write in flight
        # Held while a transaction runs on the connection, by the writer thread or a sync flush.
        self._write_lock = threading.Lock()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._sync_level = "NORMAL"  # _open's
        self._autocheckpoint = AUTOCHECKPOINT_PAGES  # _open's (SQLite's default)
        self._inline_commits = 0  # since the last commit that may checkpoint
        self._unsynced = False  # a commit since the last synchronous=FULL one
        self.register(MODELS, dict)
        self.register(SERVERS, dict)

    def register(self, kind: ResourceKind[T], current: Callable[[], Mapping[str, T]]) -> None:
        """Persist ``kind``; ``current()`` returns its live objects by name when flushing.

        Registering the same kind again only rebinds ``current`` (dirty names are kept).
        """
        bound = self._bindings.get(kind.name)
        if bound is not None and bound.kind != kind:
            raise StoreError(f"two different kinds are named {kind.name!r}")
        if self._db is not None and not has_table(self._db, kind.name):
            raise StoreError(f"kind {kind.name!r} has no table: add a migration creating it")
        if bound is None:
            self._bindings[kind.name] = _Binding(kind, current)
        else:
            bound.current = current

    def bind(
        self, models: Callable[[], dict[str, ModelRecord]], servers: Callable[[], dict[str, Server]]
    ) -> None:
        """Where the live models and servers are read from when flushing."""
        self.register(MODELS, models)
        self.register(SERVERS, servers)

    # -- writes ------------------------------------------------------------------------------------

    def changed(self, kind: ResourceKind[Any], name: str) -> None:
        """``name`` changed (or is gone): write it with the next batch."""
        if self._db is not None:
            self._binding(kind).dirty.add(name)
            self._schedule_flush(FLUSH_DELAY)

    def model_changed(self, name: str) -> None:
        self.changed(MODELS, name)

    def server_changed(self, name: str) -> None:
        self.changed(SERVERS, name)

    def flush(self, *, durable: bool = True) -> None:
        """Write every dirty name in one transaction. On failure it raises and forgets nothing.

        ``durable`` (API calls, close): the commit is on the disk when this returns, with every
        earlier one (``synchronous=FULL``: it survives power loss). Otherwise (timed flushes of
        agent-reported state, which agents report again) it survives a crash of the scheduler, not
        of the machine, and costs no fsync (``NORMAL``). A background commit in flight is waited
        for first, so this one lands after it.
        """
        if self._db is None:
            return
        with self._write_lock:
            batch = self._take(durable=durable)
            if batch is None:
                return
            try:
                self._commit(batch)
            except BaseException:
                self._restore(batch)
                raise

    async def group_commit(self) -> None:
        """Return once everything dirty now is durably committed (as :meth:`flush`), sharing the
        commit with every caller that arrives before it starts. Raises what that commit raised
        (names stay dirty, as with :meth:`flush`)."""
        if self._db is None:
            return
        if self._group is None:
            self._group = asyncio.get_running_loop().create_future()
            if self._writing is None:
                asyncio.get_running_loop().call_soon(self._start_group)
        # Shielded: one caller being cancelled must not cancel the commit the others wait for.
        await asyncio.shield(self._group)

    async def committing(self) -> None:
        """Return once the durable commit in flight now (if any) has ended, committed or not; at once
        when none is. Later commits are not waited for, so a caller never waits for more than one
        commit however busy the API is."""
        pending = self._committing
        if pending is not None:
            with contextlib.suppress(Exception):  # its failure is its callers' to report
                await asyncio.shield(pending)

    def _start_group(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            self._start_write(group, durable=True)

    def _start_write(self, group: asyncio.Future[None] | None, *, durable: bool) -> None:
        """Encode what is dirty now and hand it to the writer thread (nothing is in flight)."""
        try:
            batch = None if self._db is None else self._take(durable=durable)
        except Exception as error:  # noqa: BLE001 - an encoding failure goes to the waiters
            self._settle(group, error)
            return
        if batch is None:
            self._settle(group, None)
            return
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state-writer")
        self._write_lock.acquire()  # free: no commit in flight, and a sync flush runs on this thread
        try:
            writing = asyncio.get_running_loop().run_in_executor(self._writer, self._commit_released, batch)
        except BaseException:
            self._write_lock.release()
            raise
        self._writing = writing
        self._committing = group if durable else None
        writing.add_done_callback(functools.partial(self._written, group, batch))

    def _commit_released(self, batch: _Batch) -> None:
        """Writer thread: commit, then let the next commit (or a sync flush) have the connection."""
        try:
            self._commit(batch)
        finally:
            self._write_lock.release()

    def _written(self, group: asyncio.Future[None] | None, batch: _Batch, done: asyncio.Future[None]) -> None:
        self._writing = self._committing = None
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._restore(batch)
            if group is None:  # waiters hear of it themselves
                log.warning("state flush failed, will retry", error=str(error), retry_in=RETRY_DELAY)
            if self._db is not None:
                self._schedule_flush(RETRY_DELAY)
        self._settle(group, error)
        if self._group is not None:  # callers that arrived during this commit: theirs now
            self._start_group()

    @staticmethod
    def _settle(group: asyncio.Future[None] | None, error: BaseException | None) -> None:
        if group is None or group.done():
            return
        if error is None:
            group.set_result(None)
        else:
            group.set_exception(error)
            group.exception()  # retrieved: waiters that were cancelled meanwhile leave no warning

    def _take(self, *, durable: bool) -> _Batch | None:
        """Encode every dirty name now (event loop) and mark it clean; None: nothing to commit."""
        writes = []
        for bound in self._bindings.values():
            if bound.dirty:
                names = set(bound.dirty)
                writes.append(_encode(bound, names))
                bound.dirty -= names
        if not writes and not (durable and self._unsynced):
            return None
        return _Batch(writes, durable)

    def _restore(self, batch: _Batch) -> None:
        """A commit failed: its names are dirty again, for the next one."""
        for write in batch.writes:
            write.bound.dirty |= write.names

    def _commit(self, batch: _Batch, *, checkpoint: bool = True) -> None:
        """One transaction (any thread, holding the write lock); ``checkpoint``: SQLite may then
        checkpoint the WAL (an fsync of the database file: not on the event loop)."""
        assert self._db is not None
        self._synchronous("FULL" if batch.durable else "NORMAL")
        self._set_autocheckpoint(AUTOCHECKPOINT_PAGES if checkpoint else 0)
        if checkpoint:
            self._inline_commits = 0
        with transaction(self._db) as db:
            for write in batch.writes:
                db.executemany(f"INSERT OR REPLACE INTO {write.table} VALUES (?, ?)", write.rows)
                db.executemany(f"DELETE FROM {write.table} WHERE name = ?", write.gone)
            if not batch.writes:  # only earlier commits to make durable: a commit is what syncs the WAL
                db.execute("INSERT OR REPLACE INTO meta VALUES ('synced', '1')")
        self._unsynced = not batch.durable

    def _synchronous(self, level: str) -> None:
        if self._db is not None and level != self._sync_level:
            self._db.execute(f"PRAGMA synchronous={level}")  # outside a transaction, as SQLite requires
            self._sync_level = level

    def _set_autocheckpoint(self, pages: int) -> None:
        if self._db is not None and pages != self._autocheckpoint:
            self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
            self._autocheckpoint = pages

    def _schedule_flush(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        if self._writing is not None or self._group is not None:
            self._schedule_flush(FLUSH_DELAY)  # a commit is in flight or next: try after it
            return
        dirty = sum(len(bound.dirty) for bound in self._bindings.values())
        if dirty <= INLINE_NAMES and self._inline_commits < INLINE_COMMITS_PER_CHECKPOINT:
            self._commit_inline()
        else:
            self._start_write(None, durable=False)

    def _commit_inline(self) -> None:
        """A small timed batch, committed here on the event loop (nothing is in flight)."""
        try:
            batch = self._take(durable=False)
            if batch is None:
                return
            with self._write_lock:
                try:
                    self._commit(batch, checkpoint=False)
                except BaseException:
                    self._restore(batch)
                    raise
        except Exception as error:  # noqa: BLE001 - retried, as a failed background flush is
            log.warning("state flush failed, will retry", error=str(error), retry_in=RETRY_DELAY)
            self._schedule_flush(RETRY_DELAY)
            return
        self._inline_commits += 1

    # -- reads -------------------------------------------------------------------------------------

    def load_kind(self, kind: ResourceKind[T]) -> dict[str, T]:
        """Every stored object of a registered ``kind``, by name."""
        self._binding(kind)
        if self._db is None:
            return {}
        try:
            rows = self._db.execute(f"SELECT name, record FROM {kind.name}").fetchall()
        except sqlite3.DatabaseError as error:
            raise corrupt(self._path or Path(), str(error)) from error
        loaded = {}
        for name, record in rows:
            try:
                loaded[name] = kind.decode(name, record)
            except Exception as error:  # any decoding failure means a damaged record
                raise corrupt(self._path or Path(), f"{kind.name} record {name!r}: {error!r}") from error
        return loaded

    def load(self) -> tuple[dict[str, ModelRecord], dict[str, Server]]:
        return self.load_kind(MODELS), self.load_kind(SERVERS)

    def close(self) -> None:
        """Flush what is dirty and close; the connection is closed even if that flush fails."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._db is None:
            return
        group, self._group = self._group, None
        try:
            self.flush()  # after any commit in flight; includes what waiting callers changed
        except BaseException as error:
            self._settle(group, error)
            raise
        else:
            self._settle(group, None)
        finally:
            with self._write_lock:
                self._db.close()
                self._db = None
            if self._writer is not None:
                self._writer.shutdown(wait=False)
                self._writer = None

    def _binding(self, kind: ResourceKind[Any]) -> _Binding:
        bound = self._bindings.get(kind.name)
        if bound is None or bound.kind != kind:
            raise StoreError(f"kind {kind.name!r} is not registered with this store")
        return bound


@dataclass(frozen=True)
class _Write:
    """One kind's rows of a commit, encoded on the event loop."""

    bound: _Binding
    names: set[str]
    table: str
    rows: list[tuple[str, str]]
    gone: list[tuple[str]]


@dataclass(frozen=True)
class _Batch:
    writes: list[_Write]
    durable: bool


def _encode(bound: _Binding, names: set[str]) -> _Write:
    current = bound.current()
    encode = bound.kind.encode
    rows = [(name, encode(obj)) for name in names if (obj := current.get(name)) is not None]
    gone = [(name,) for name in names if name not in current]
    return _Write(bound, names, bound.kind.name, rows, gone)


MODELS: ResourceKind[ModelRecord] = ResourceKind("models", records.encode_model, records.decode_model)
SERVERS: ResourceKind[Server] = ResourceKind("servers", records.encode_server, records.decode_server)
