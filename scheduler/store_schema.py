"""The state database's schema: resource kinds, their tables, the migrations, and opening a file.

Schema: each kind has its own table ``<kind>(name TEXT PRIMARY KEY, record TEXT NOT NULL)``, one
self-describing text record (JSON) per object. The schema version lives in ``meta`` under the key
``schema``; :data:`MIGRATIONS` is the ordered, append-only list of steps from an empty file to the
current version. Opening a database applies the missing steps in one transaction; a database
written by a newer meshserve (a version this code does not know) is refused with
:class:`SchemaTooNewError`. Never edit or reorder a released migration: add one.

Adding a kind (experiments, pipelines, ...) takes two steps:

1. append ``Migration(N + 1, "experiments", (kind_table("experiments"),))`` to :data:`MIGRATIONS`;
2. define ``EXPERIMENTS = ResourceKind("experiments", encode, decode)`` and, where the live objects
   are kept, ``store.register(EXPERIMENTS, lambda: self.experiments)``; then call
   ``store.changed(EXPERIMENTS, name)`` on every change and ``store.load_kind(EXPERIMENTS)`` on start.

An older database simply gains the empty table; an older scheduler refuses the newer file rather
than silently dropping what it cannot read.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("meshserve.scheduler.store")
T = TypeVar("T")


class StoreError(RuntimeError):
    """The state database cannot be used as asked."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer meshserve, with a schema this code does not know."""


class StateCorruptError(StoreError):
    """The database file is damaged or not a meshserve state database: restarting cannot help."""


def corrupt(path: Path, what: str) -> StateCorruptError:
    return StateCorruptError(
        f"state database {path} is corrupt ({what}); move it aside to start with no models or servers "
        f"(mv {path} {path}.corrupt), or restore a backup, then start the scheduler again"
    )


# -- kinds and migrations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceKind(Generic[T]):
    """One kind of persisted object: its table (``name``) and its text (de)serialisation."""

    name: str
    encode: Callable[[T], str]
    decode: Callable[[str, str], T]  # (object name, record) -> object

    def __post_init__(self) -> None:
        # The name is spliced into SQL as a table name.
        if not self.name.isidentifier():
            raise ValueError(f"kind name must be an identifier, not {self.name!r}")


@dataclass(frozen=True)
class Migration:
    """One schema step; ``version`` is the schema a database has once it is applied."""

    version: int
    description: str
    statements: tuple[str, ...]


def kind_table(kind: str) -> str:
    """The DDL of a kind's table (every kind has this shape)."""
    return f"CREATE TABLE IF NOT EXISTS {kind} (name TEXT PRIMARY KEY, record TEXT NOT NULL)"


# Append-only. Version 1 is the schema meshserve shipped first (IF NOT EXISTS: such files exist).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "models and servers", (kind_table("models"), kind_table("servers"))),
    Migration(2, "experiments", (kind_table("experiments"),)),
    Migration(3, "pipelines", (kind_table("pipelines"),)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# -- opening and migrating -----------------------------------------------------------------------------


def open_database(path: Path, migrations: Sequence[Migration]) -> sqlite3.Connection:
    _check_numbering(migrations)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are explicit (transaction), never implicit.
    # Used by one thread at a time (StateStore's write lock), not always the one that opened it.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Damage anywhere in the file is found now, with one clear message, not mid-restore.
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise corrupt(path, "; ".join(problems))
        _migrate(db, path, migrations)
    except sqlite3.OperationalError as error:  # locked, unreadable, disk full: not damage, but fatal
        db.close()
        raise StoreError(f"cannot use state database {path}: {error}") from error
    except sqlite3.DatabaseError as error:  # "file is not a database", "disk image is malformed"
        db.close()
        raise corrupt(path, str(error)) from error
    except BaseException:
        db.close()
        raise
    return db


def _check_numbering(migrations: Sequence[Migration]) -> None:
    numbers = [m.version for m in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order, not {numbers}")


def _migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Bring the database to the last migration's version, all in one transaction."""
    known = len(migrations)
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        found = _schema_version(db)
        if found > known:
            raise SchemaTooNewError(
                f"state database {path} has schema version {found}, but this meshserve knows versions "
                f"up to {known}: it was written by a newer meshserve; run that one, or use another "
                "--state-dir"
            )
        for migration in migrations[found:]:
            for statement in migration.statements:
                db.execute(statement)
        if found < known:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(known),))
            log.info("state database migrated", path=str(path), from_version=found, to_version=known)


def _schema_version(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return 0 if row is None else int(row[0])


def has_table(db: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return db.execute(query, (table,)).fetchone() is not None


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE: take the write lock up front, so two openers cannot both migrate.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # A failed COMMIT leaves the transaction open; a dead connection cannot roll back at all.
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        raise
