"""Dataflow engines as the scheduler sees them: who is subscribed, what each must run, what each said.

The engine's part of a pipeline's life is a seam (decision 0019): an engine subscribes to the
Chainer service (``chainer.proto``), receives one ``PipelineUpdateMessage`` per pipeline it must
start (``Create``) or stop (``Delete``), and answers each with ``PipelineUpdateEvent``. This module
only keeps those facts; :mod:`scheduler.pipelines` turns them into pipeline states.

Each session also remembers what its engine was last told per pipeline (:attr:`EngineSession.told`)
and the engine's gateway address (decision 0022), which :mod:`scheduler.pipeline_placement` needs to
decide who runs what and where ``<p>.pipeline`` routes.

Bounded by construction: an engine's outbox holds at most one message per pipeline (a newer one
replaces an older one not yet sent, since only the latest desired state matters), and at most
:data:`MAX_ENGINES` engines are subscribed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from apis.mlops.chainer import chainer_pb2
from apis.routing import Endpoint
from apis.validation import InvalidResource, validate_name

log = structlog.get_logger("meshserve.scheduler.dataflow")

MAX_ENGINES = 64
Update = chainer_pb2.PipelineUpdateMessage
CREATE = chainer_pb2.PipelineUpdateMessage.Create
DELETE = chainer_pb2.PipelineUpdateMessage.Delete


@dataclass(frozen=True, slots=True)
class Result:
    """What an engine last reported for one pipeline."""

    version: int
    uid: str
    op: int  # CREATE or DELETE
    success: bool
    reason: str


class EngineSession:
    """One subscribed engine: its outbox (latest update per pipeline), what it was told per
    pipeline, its reported results, and its gateway (None: the scheduler's default address)."""

    def __init__(self, name: str, gateway: Endpoint | None = None) -> None:
        self.name = name
        self.gateway = gateway
        self.results: dict[str, Result] = {}
        self.told: dict[str, Update] = {}  # pipeline -> the last update sent about it
        self._outbox: dict[str, Update] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def send(self, update: Update) -> None:
        message = Update()
        message.CopyFrom(update)
        message.stream = self.name  # the engine echoes it, so its answer names who answers
        self._outbox.pop(update.pipeline, None)  # re-inserted last: updates go out in order
        self.results.pop(update.pipeline, None)  # whatever it said before is superseded
        self._outbox[update.pipeline] = message
        self.told[update.pipeline] = message
        self._wake.set()

    def runs(self, pipeline: str) -> bool:
        """Told to run ``pipeline`` (a Create is its last word about it)."""
        told = self.told.get(pipeline)
        return told is not None and told.op == CREATE

    def serves(self, pipeline: str) -> bool:
        """Confirmed running the version it was last told to run."""
        told = self.told.get(pipeline)
        result = self.results.get(pipeline)
        return (
            told is not None
            and told.op == CREATE
            and result is not None
            and result.success
            and result.op == CREATE
            and result.version == told.version
        )

    def forget(self, pipeline: str) -> None:
        self._outbox.pop(pipeline, None)
        self.told.pop(pipeline, None)
        self.results.pop(pipeline, None)

    async def next(self) -> Update | None:
        """The next update to send; None once the session is closed."""
        while not self._outbox and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            return None
        name = next(iter(self._outbox))
        return self._outbox.pop(name)

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class DataflowEngines:
    """Every subscribed engine; ``on_change(pipeline)`` after an engine answered about a pipeline,
    ``on_change(None)`` after engines came or went (every pipeline may have changed)."""

    def __init__(self, on_change: Callable[[str | None], None]) -> None:
        self.sessions: dict[str, EngineSession] = {}
        self._on_change = on_change

    def subscribe(self, name: str, gateway: Endpoint | None = None) -> EngineSession:
        """A new engine stream; one already open under the same name is closed (the engine
        restarted before its old stream was noticed dead)."""
        validate_name(name, kind="dataflow engine")
        old = self.sessions.pop(name, None)
        if old is not None:
            old.close()
        elif len(self.sessions) >= MAX_ENGINES:
            raise InvalidResource(f"{MAX_ENGINES} dataflow engines are subscribed already; the limit")
        session = EngineSession(name, gateway)
        self.sessions[name] = session
        log.info("dataflow engine subscribed", engine=name, gateway=gateway, replaced=old is not None)
        self._on_change(None)
        return session

    def unsubscribe(self, session: EngineSession) -> None:
        session.close()
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
            log.info("dataflow engine gone", engine=session.name)
            self._on_change(None)

    def report(self, status: chainer_pb2.PipelineUpdateStatusMessage) -> None:
        """An engine's answer; one from an engine that is not subscribed (any more) is ignored."""
        update = status.update
        session = self.sessions.get(update.stream)
        if session is None:
            log.warning("answer from an unsubscribed dataflow engine ignored", engine=update.stream)
            return
        if update.op not in (CREATE, DELETE) or not update.pipeline:
            raise InvalidResource(
                "a PipelineUpdateEvent must carry the update it answers (op Create or Delete, pipeline)"
            )
        session.results[update.pipeline] = Result(
            update.version, update.uid, update.op, status.success, status.reason[:1024]
        )
        self._on_change(update.pipeline)

    def forget(self, pipeline: str) -> None:
        """Drop everything about a pipeline whose record is gone (keeps the maps bounded)."""
        for session in self.sessions.values():
            session.forget(pipeline)

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
