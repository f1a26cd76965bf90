"""Persistent scheduler state in SQLite (stdlib, WAL mode) in the state directory.

What is kept: every model with its versions (spec, server, replica states, model state) and every
server with its replicas' configs. That is enough for a restarted scheduler to publish the very
same Envoy configuration before any agent has reconnected, so the data plane never notices.

Writes are coalesced: the core marks names dirty as it changes them and one transaction writes
them all, ``FLUSH_DELAY`` later, so a burst of 10,000 loads is not 10,000 commits. API calls do
not wait for that: the scheduler commits before it answers (``flush``), so nothing a client was
told is accepted can be lost; what the delay may lose is agent-reported state, which agents
report again when they reconnect.

Contract: only :class:`scheduler.core.Scheduler` calls ``model_changed``/``server_changed``, on the
event loop; ``load`` is called once, before serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler.state import (
    ModelRecord,
    ModelState,
    ModelVersion,
    ReplicaState,
    ReplicaStatus,
    Server,
    ServerReplica,
)

SCHEMA_VERSION = 1
FLUSH_DELAY = 0.05  # seconds
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS servers (name TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class StateStore:
    def __init__(self, path: Path | None) -> None:
        """``path=None`` keeps nothing (tests, throwaway runs)."""
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._check_schema()
        self._dirty_models: set[str] = set()
        self._dirty_servers: set[str] = set()
        self._flush_scheduled = False
        self._models: Callable[[], dict[str, ModelRecord]] = dict
        self._servers: Callable[[], dict[str, Server]] = dict

    def _check_schema(self) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"state database has schema {row[0]}, this scheduler reads {SCHEMA_VERSION}")

    def bind(
        self, models: Callable[[], dict[str, ModelRecord]], servers: Callable[[], dict[str, Server]]
    ) -> None:
        """Where the live state is read from when flushing."""
        self._models, self._servers = models, servers

    # -- writes ------------------------------------------------------------------------------------

    def model_changed(self, name: str) -> None:
        if self._db is not None:
            self._dirty_models.add(name)
            self._schedule_flush()

    def server_changed(self, name: str) -> None:
        if self._db is not None:
            self._dirty_servers.add(name)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._db is None or not (self._dirty_models or self._dirty_servers):
            return
        models, servers = self._models(), self._servers()
        model_names, self._dirty_models = self._dirty_models, set()
        server_names, self._dirty_servers = self._dirty_servers, set()
        with _transaction(self._db) as db:
            for name in model_names:
                if (record := models.get(name)) is not None:
                    db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (name, _dump_model(record)))
                else:
                    db.execute("DELETE FROM models WHERE name = ?", (name,))
            for name in server_names:
                if (server := servers.get(name)) is not None:
                    db.execute("INSERT OR REPLACE INTO servers VALUES (?, ?)", (name, _dump_server(server)))
                else:
                    db.execute("DELETE FROM servers WHERE name = ?", (name,))

    # -- reads -------------------------------------------------------------------------------------

    def load(self) -> tuple[dict[str, ModelRecord], dict[str, Server]]:
        if self._db is None:
            return {}, {}
        rows = self._db.execute("SELECT name, record FROM models").fetchall()
        models = {name: _load_model(name, json.loads(record)) for name, record in rows}
        rows = self._db.execute("SELECT name, record FROM servers").fetchall()
        servers = {name: _load_server(name, json.loads(record)) for name, record in rows}
        return models, servers

    def close(self) -> None:
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db

    def __exit__(self, kind: object, *_: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


# -- (de)serialisation: JSON envelopes around protobuf bytes -----------------------------------------


def _b64(message: Any) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _dump_model(record: ModelRecord) -> str:
    return json.dumps(
        {
            "deleted": record.deleted,
            "versions": [
                {
                    "number": v.number,
                    "spec": _b64(v.spec),
                    "server": v.server,
                    "state": v.state.value,
                    "reason": v.reason,
                    "timestamp": v.timestamp,
                    "schedule_error": v.schedule_error,
                    "replicas": {
                        str(idx): [r.state.value, r.reason, r.timestamp] for idx, r in v.replicas.items()
                    },
                }
                for v in record.versions
            ],
        }
    )


def _load_model(name: str, data: dict[str, Any]) -> ModelRecord:
    versions = []
    for v in data["versions"]:
        spec = scheduler_pb2.Model()
        spec.ParseFromString(base64.b64decode(v["spec"]))
        versions.append(
            ModelVersion(
                v["number"],
                spec,
                server=v["server"],
                replicas={
                    int(idx): ReplicaStatus(ReplicaState(state), reason, stamp)
                    for idx, (state, reason, stamp) in v["replicas"].items()
                },
                state=ModelState(v["state"]),
                reason=v["reason"],
                timestamp=v["timestamp"],
                schedule_error=v["schedule_error"],
            )
        )
    return ModelRecord(name, versions, deleted=data["deleted"])


def _dump_server(server: Server) -> str:
    return json.dumps(
        {
            "shared": server.shared,
            "expected_replicas": server.expected_replicas,
            "min_replicas": server.min_replicas,
            "max_replicas": server.max_replicas,
            "replicas": {
                str(r.idx): {"config": _b64(r.config), "available_memory": r.available_memory}
                for r in server.replicas.values()
            },
        }
    )


def _load_server(name: str, data: dict[str, Any]) -> Server:
    server = Server(
        name=name,
        shared=data["shared"],
        expected_replicas=data["expected_replicas"],
        min_replicas=data.get("min_replicas", 0),
        max_replicas=data.get("max_replicas", 0),
    )
    for idx, replica in data["replicas"].items():
        config = agent_pb2.ReplicaConfig()
        config.ParseFromString(base64.b64decode(replica["config"]))
        # Restored replicas are not connected until their agent subscribes again.
        server.replicas[int(idx)] = ServerReplica(
            name,
            int(idx),
            config,
            available_memory=replica["available_memory"],
            connected=False,
            retiring=server.is_retiring(int(idx)),
        )
    return server
