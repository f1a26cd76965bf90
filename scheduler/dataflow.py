"""Dataflow engines as the scheduler sees them: who is subscribed, what each must run, what each said.

The engine's part of a pipeline's life is a seam (decision 0019): an engine subscribes to the
Chainer service (``chainer.proto``), receives one ``PipelineUpdateMessage`` per pipeline it must
start (``Create``) or stop (``Delete``), and answers each with ``PipelineUpdateEvent``. This module
only keeps those facts; :mod:`scheduler.pipelines` turns them into pipeline states.

Bounded by construction: an engine's outbox holds at most one message per pipeline (a newer one
replaces an older one not yet sent, since only the latest desired state matters), and at most
:data:`MAX_ENGINES` engines are subscribed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from apis.mlops.chainer import chainer_pb2
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
    """One subscribed engine: its outbox (latest update per pipeline) and its reported results."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.results: dict[str, Result] = {}
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
        self._wake.set()

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

    def subscribe(self, name: str, initial: Iterable[Update]) -> EngineSession:
        """A new engine stream; one already open under the same name is closed (the engine
        restarted before its old stream was noticed dead)."""
        validate_name(name, kind="dataflow engine")
        old = self.sessions.pop(name, None)
        if old is not None:
            old.close()
        elif len(self.sessions) >= MAX_ENGINES:
            raise InvalidResource(f"{MAX_ENGINES} dataflow engines are subscribed already; the limit")
        session = EngineSession(name)
        for update in initial:
            session.send(update)
        self.sessions[name] = session
        log.info("dataflow engine subscribed", engine=name, replaced=old is not None)
        self._on_change(None)
        return session

    def unsubscribe(self, session: EngineSession) -> None:
        session.close()
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]
            log.info("dataflow engine gone", engine=session.name)
            self._on_change(None)

    def broadcast(self, update: Update) -> None:
        for session in self.sessions.values():
            session.send(update)

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

    def results(self, pipeline: str) -> dict[str, Result | None]:
        """Each subscribed engine's last answer about ``pipeline`` (None: none yet)."""
        return {name: s.results.get(pipeline) for name, s in sorted(self.sessions.items())}

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
