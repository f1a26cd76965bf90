"""Pipeline use cases: load (a new version when the spec changed), unload, status; states per §8.

A pipeline runs on its *owners*, engines chosen by consistent hashing, and moves make-before-break
when engines join or leave (:mod:`scheduler.pipeline_placement`, decision 0022). Its latest version
is *Ready* once every owner confirmed it runs (:mod:`scheduler.dataflow`) and every Envoy holds
the ``<p>.pipeline`` route to the owners' gateways; ``modelsReady`` follows the core's models (true
only while every step's model is available); :meth:`Pipelines.ready` (what a pipeline's ready
endpoint answers) needs both. A pipeline may be loaded before its models exist. Decision 0019
explains versions and states.

Version states, computed from the engines' answers (never from time):

- live latest version: no engine subscribed → ``PipelineCreate``; sent, no engine serving it →
  ``PipelineCreating``; some owners confirmed or an old owner still serves → ``PipelineRebalancing``;
  all owners confirmed and the route held → ``PipelineReady`` ("created pipeline"); an owner failed →
  ``PipelineFailed`` naming engine and reason.
  Once it is Ready, earlier versions are ``PipelineTerminated`` ("replaced by version N"); until
  then they keep their state (their dataflow still runs).
- unloaded: ``PipelineTerminate`` → ``PipelineTerminating`` (engines told) → ``PipelineTerminated``
  once every engine told to stop confirmed (at once when none ran it). Final.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import structlog

from apis.mlops.chainer import chainer_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.names import PIPELINE_SUFFIX
from apis.routing import Endpoint, Route
from apis.validation import InvalidResource, validate_name
from pipelines.model import Pipeline
from scheduler.core import Scheduler
from scheduler.dataflow import CREATE, DELETE, DataflowEngines, EngineSession, Result
from scheduler.errors import NotFound
from scheduler.member_index import MemberIndex
from scheduler.pipeline_placement import PipelinePlacement
from scheduler.pipeline_records import (
    PipelineRecord,
    PipelineStatus,
    PipelineVersion,
    decode_pipeline,
    encode_pipeline,
)
from scheduler.state import ModelState
from scheduler.store import StateStore
from scheduler.store_schema import ResourceKind

log = structlog.get_logger("meshserve.scheduler.pipelines")

PIPELINES: ResourceKind[PipelineRecord] = ResourceKind("pipelines", encode_pipeline, decode_pipeline)
MAX_PIPELINES = 10_000  # records, unloaded ones included (the oldest unloaded one makes room)
MAX_VERSIONS = 10  # kept per pipeline; older ones are forgotten (numbers keep counting up)
CREATED = "created pipeline"  # the reference's reason once ready (§8.1)

S = PipelineStatus


class PipelineNotFound(NotFound):
    pass


def new_uid() -> str:
    """20 characters of lowercase base32hex, like the reference's xids: time first, so they sort."""
    raw = int(time.time()).to_bytes(4, "big") + os.urandom(8)
    return base64.b32hexencode(raw).decode("ascii").rstrip("=").lower()


class Pipelines:
    """Every pipeline and its versions; tells the dataflow engines what to run and follows them."""

    def __init__(
        self, core: Scheduler, store: StateStore, *, gateway: Endpoint | None = None, replicas: int = 1
    ) -> None:
        self._core = core
        self._store = store
        self.records: dict[str, PipelineRecord] = {}
        self._users: MemberIndex[str] = MemberIndex()  # model -> pipelines whose latest version calls it
        self.engines = DataflowEngines(self._engines_changed)
        # ``gateway``: where Envoy reaches an engine that registered no gateway of its own
        # (decision 0020); None: no routes, and Ready needs the engines only.
        self.placement = PipelinePlacement(self.engines, replicas=replicas, gateway=gateway)
        self._listeners: list[Callable[[str], None]] = []
        self._override: Callable[[str], Route | None] = lambda _: None
        store.register(PIPELINES, lambda: self.records)
        core.on_model_change(self._model_changed)
        core.on_route_confirmed(self._route_confirmed)

    def restore(self) -> None:
        """Reload persisted pipelines; no engine is subscribed yet, so nothing runs."""
        self.records = self._store.load_kind(PIPELINES)
        for record in self.records.values():
            latest = record.latest
            self._users.set(record.name, latest.pipeline.models)
            for version in record.versions[:-1]:
                if version.status is not S.PipelineTerminated:  # engines will get the latest only
                    version.set(S.PipelineTerminated, f"replaced by version {latest.number}")
            self._refresh(record, notify=False)
        log.info("pipelines restored", pipelines=len(self.records))

    # -- use cases ----------------------------------------------------------------------------------

    def load(self, message: scheduler_pb2.Pipeline) -> PipelineVersion:
        """Create a pipeline, or a new version of it when its spec changed; validated in full first.

        Applying the same spec again changes nothing (same version, same uid).
        """
        spec = Pipeline.from_proto(message)
        spec = replace(spec, uid="", version=0)  # the scheduler numbers versions and gives uids
        record = self.records.get(spec.name)
        if record is not None and not record.deleted and _same(record.latest.pipeline, spec):
            latest = record.latest
            log.info("pipeline unchanged", pipeline=spec.name, version=latest.number, status=latest.status)
            if latest.status is S.PipelineFailed:  # applying it again is how a user retries
                self.placement.place(latest.pipeline, again=True)
                self._refresh(record)
            return latest
        if record is None:
            self._make_room(spec.name)
            record = PipelineRecord(spec.name, [])
            self.records[spec.name] = record
        number = record.latest.number + 1 if record.versions else 1
        version = PipelineVersion(replace(spec, uid=new_uid(), version=number))
        record.versions.append(version)
        del record.versions[:-MAX_VERSIONS]
        self._users.set(spec.name, version.pipeline.models)
        record.deleted = False
        log.info("pipeline loaded", pipeline=spec.name, version=number, steps=len(spec.steps))
        self._refresh(record)  # places it on its owners
        return version

    def unload(self, name: str) -> None:
        record = self.get(name)
        if record.deleted:
            raise PipelineNotFound(f"pipeline {name} is unloaded already")
        record.deleted = True
        record.latest.set(S.PipelineTerminate, "unload requested")
        log.info("pipeline unloaded", pipeline=name, version=record.latest.number)
        self.placement.stop_everywhere(record.latest.pipeline)
        self._core.routing.publish(Route(record.latest.pipeline.route_name))
        self._refresh(record)

    def get(self, name: str) -> PipelineRecord:
        validate_name(name, kind="pipeline")
        record = self.records.get(name)
        if record is None:
            raise PipelineNotFound(f"pipeline {name} not found")
        return record

    def ready(self, name: str) -> bool:
        """What the pipeline's ready endpoint answers: running on the dataflow and every model ready."""
        record = self.records.get(name)
        if record is None or record.deleted:
            return False
        latest = record.latest
        return latest.status is S.PipelineReady and latest.models_ready

    def on_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- the dataflow engines' side (scheduler/chainer_api.py) ---------------------------------------

    def engine_subscribed(self, name: str, gateway: Endpoint | None = None) -> EngineSession:
        """An engine's stream opened: it is sent every live pipeline it now owns (some may move to
        it from other engines)."""
        return self.engines.subscribe(name, gateway=gateway)

    def engine_answered(self, status: chainer_pb2.PipelineUpdateStatusMessage) -> None:
        if status.update.pipeline and status.update.pipeline not in self.records:
            # Kept per pipeline name, so answers about unknown names would grow without bound.
            log.warning("answer about an unknown pipeline ignored", pipeline=status.update.pipeline[:64])
            return
        self.engines.report(status)

    # -- the <p>.pipeline route ---------------------------------------------------------------------

    def route(self, record: PipelineRecord) -> Route:
        """What Envoy should hold for the pipeline once settled: its owners' gateways while it is
        loaded, else nothing."""
        if record.deleted:
            return Route(record.latest.pipeline.route_name)
        return self.placement.final_route(record.latest.pipeline)

    def set_route_override(self, override: Callable[[str], Route | None]) -> None:
        """Let a pipeline experiment take over a pipeline's endpoint: ``override(pipeline)`` returns
        the route to publish as ``<p>.pipeline`` instead of its own, or None."""
        self._override = override

    def reroute(self, name: str) -> None:
        """Re-plan a pipeline's endpoint now (a takeover started or stopped)."""
        record = self.records.get(name)
        if record is not None:
            self._refresh(record)

    def _move(self, record: PipelineRecord) -> None:
        """Place the latest version on its owners and take the next step of any move. While an
        experiment takes the endpoint over, its route is published instead (a move then waits:
        the old owners keep the pipeline until the pipeline's own route is back)."""
        pipeline = record.latest.pipeline
        self.placement.place(pipeline)
        if not self.placement.routes:
            self.placement.release(pipeline, None)
            return
        held = self._core.routing.held(pipeline.route_name)
        override = self._override(record.name)
        route = override or self.placement.next_route(pipeline, held)
        if route is not None:
            self._core.routing.publish(route)
        released = self.placement.release(pipeline, held)
        if released:
            owners = self.placement.owners(record.name)
            log.info("pipeline moved", pipeline=record.name, to=owners, off=released)

    def _route_held(self, record: PipelineRecord) -> bool:
        """Every Envoy holds the pipeline's own route to its owners (or, while an experiment takes
        it over, the experiment's route: both mean the endpoint answers); once unloaded, none."""
        if not self.placement.routes:
            return True
        route = self.route(record)
        held = self._core.routing.held(route.name)
        if not route.splits:
            return held is None
        if held == route:
            return True
        # An experiment's takeover (splits to other pipelines, or a mirror), each split to gateways.
        gateways = self.placement.gateways()
        return (
            held is not None
            and (held.mirror is not None or any(s.target != route.name for s in held.splits))
            and all(e in gateways for s in held.splits for e in s.endpoints)
        )

    def _route_confirmed(self, name: str) -> None:
        if name.endswith(PIPELINE_SUFFIX):
            record = self.records.get(name[: -len(PIPELINE_SUFFIX)])
            if record is not None:
                self._refresh(record)

    # -- states -------------------------------------------------------------------------------------

    def _engines_changed(self, pipeline: str | None) -> None:
        names = list(self.records) if pipeline is None else [pipeline]
        for name in names:
            record = self.records.get(name)
            if record is not None:
                self._refresh(record)

    def _model_changed(self, model: str) -> None:
        for name in sorted(self._users.owners(model)):
            self._refresh(self.records[name])

    def _refresh(self, record: PipelineRecord, *, notify: bool = True) -> None:
        latest = record.latest
        if not record.deleted:
            self._move(record)
        changed = False
        if latest.status is not S.PipelineTerminated:
            status, reason = self._engine_state(latest, deleted=record.deleted)
            changed = latest.set(status, reason)
            if changed:
                log.info(
                    "pipeline state",
                    pipeline=record.name,
                    version=latest.number,
                    status=status,
                    reason=reason,
                )
        if latest.status is S.PipelineReady or latest.status is S.PipelineTerminated:
            why = "pipeline removed" if record.deleted else f"replaced by version {latest.number}"
            for older in record.versions[:-1]:
                if older.status is not S.PipelineTerminated:
                    changed |= older.set(S.PipelineTerminated, why)
        models_ready = not record.deleted and all(self._model_ready(m) for m in latest.pipeline.models)
        for version in record.versions:
            ready = models_ready and version is latest
            changed |= version.models_ready != ready
            version.models_ready = ready
        if changed:
            self._store.changed(PIPELINES, record.name)
            if notify:
                self._notify(record.name)

    def _engine_state(self, version: PipelineVersion, *, deleted: bool) -> tuple[PipelineStatus, str]:
        name = version.pipeline.name
        sessions = self.engines.sessions
        if deleted:
            asked = self.placement.stopping(version.pipeline)
            answers = {e: _matching(sessions[e].results.get(name), version, DELETE) for e in asked}
            failed = [f"{e}: {r.reason or 'no reason given'}" for e, r in _items(answers) if not r.success]
            waiting = sorted(e for e, r in answers.items() if r is None)
            if failed:
                return S.PipelineTerminating, "dataflow engine could not stop it: " + "; ".join(failed)
            if waiting:
                return S.PipelineTerminating, "waiting for dataflow engines " + ", ".join(waiting)
            return S.PipelineTerminated, "pipeline removed"
        owners = self.placement.owners(name)
        if not owners:
            return S.PipelineCreate, "waiting for a dataflow engine to subscribe"
        mine = {e: _matching(sessions[e].results.get(name), version, CREATE) for e in owners}
        failed = [f"{e}: {r.reason or 'no reason given'}" for e, r in _items(mine) if not r.success]
        waiting = sorted(e for e, r in mine.items() if r is None)
        if failed:
            return S.PipelineFailed, "dataflow engine failed to start it: " + "; ".join(failed)
        old_serve = any(sessions[e].serves(name) for e in self.placement.draining(name))
        if not waiting and not self._route_held(self.records[name]):
            status = S.PipelineRebalancing if old_serve else S.PipelineCreating
            return status, "waiting for every Envoy to apply the route " + version.pipeline.route_name
        if not waiting:
            return S.PipelineReady, CREATED
        status = S.PipelineRebalancing if old_serve or len(owners) > len(waiting) else S.PipelineCreating
        return status, "waiting for dataflow engines " + ", ".join(waiting)

    def _model_ready(self, name: str) -> bool:
        record = self._core.models.get(name)
        return record is not None and not record.deleted and record.latest.state is ModelState.ModelAvailable

    def _make_room(self, name: str) -> None:
        if len(self.records) < MAX_PIPELINES:
            return
        gone = [r for r in self.records.values() if r.deleted and r.latest.status is S.PipelineTerminated]
        if not gone:
            raise InvalidResource(
                f"pipeline {name}: {MAX_PIPELINES} pipelines are loaded already; the limit (unload one first)"
            )
        oldest = min(gone, key=lambda r: r.latest.timestamp)
        del self.records[oldest.name]
        self._users.remove(oldest.name)
        self.engines.forget(oldest.name)
        self._store.changed(PIPELINES, oldest.name)
        self._notify(oldest.name)

    def _notify(self, name: str) -> None:
        for listener in list(self._listeners):
            listener(name)


def _same(current: Pipeline, spec: Pipeline) -> bool:
    return replace(current, uid="", version=0) == spec


def _matching(result: Result | None, version: PipelineVersion, op: int) -> Result | None:
    """An answer counts only for the version and operation asked now; older answers are stale."""
    if result is None or result.op != op or result.version != version.number:
        return None
    return result if result.uid in ("", version.pipeline.uid) else None


def _items(answers: dict[str, Result | None]) -> Iterator[tuple[str, Result]]:
    return ((engine, r) for engine, r in sorted(answers.items()) if r is not None)
