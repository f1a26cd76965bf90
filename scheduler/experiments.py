"""Experiment use cases: start (or edit), stop, status; re-planned whenever a member changes.

Members are models, or pipelines when ``resourceType`` is pipeline (a pipeline is ready when
:meth:`scheduler.pipelines.Pipelines.ready`: running on the engines with its models available).
Owns every experiment's routes (``<e>.experiment``, ``<m>.mirror``) and, through the core's (or the
pipelines') route override, a default model's (pipeline's) endpoint while the experiment splits
it. Re-planning is coalesced per event-loop turn (a burst of member changes re-plans each experiment
once) and never re-enters the core from inside one of its listeners.

An experiment is *active* when its candidates (and mirror) are available **and** every Envoy has
ACKed the routes of its current plan. Editing one (start again with the same name) swaps its plan
atomically: the new routes replace the old ones in one publication per route name.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from apis.mlops.scheduler import scheduler_pb2
from apis.names import PIPELINE_SUFFIX
from apis.routing import Route
from apis.validation import InvalidResource, validate_name
from experiments.model import Experiment, ResourceType
from experiments.plan import Member, TrafficPlan, plan
from scheduler.core import Scheduler
from scheduler.errors import NotFound
from scheduler.member_index import MemberIndex
from scheduler.pipeline_records import PipelineStatus
from scheduler.pipelines import Pipelines
from scheduler.state import ModelState
from scheduler.store import StateStore
from scheduler.store_schema import ResourceKind

log = structlog.get_logger("meshserve.scheduler.experiments")


def _encode(experiment: Experiment) -> str:
    return base64.b64encode(experiment.to_proto().SerializeToString()).decode("ascii")


def _decode(name: str, record: str) -> Experiment:
    return Experiment.from_proto(scheduler_pb2.Experiment.FromString(base64.b64decode(record)))


# Persisted as Seldon's own Experiment message, so the record reads back through the same checks.
EXPERIMENTS: ResourceKind[Experiment] = ResourceKind("experiments", _encode, _decode)
MAX_EXPERIMENTS = 10_000  # running at once; each holds a route and a plan in memory


class ExperimentNotFound(NotFound):
    pass


@dataclass(frozen=True, slots=True)
class Status:
    active: bool
    candidates_ready: bool
    mirror_ready: bool
    description: str


class Experiments:
    """Every experiment, its current traffic plan and status; publishes through the core."""

    def __init__(self, core: Scheduler, store: StateStore, pipelines: Pipelines | None = None) -> None:
        self._core = core
        self._store = store
        self._pipelines = pipelines
        self.experiments: dict[str, Experiment] = {}
        # (kind, resource) -> experiments routing to it, and -> the experiment it is the default of.
        self._members: MemberIndex[tuple[ResourceType, str]] = MemberIndex()
        self._defaults: MemberIndex[tuple[ResourceType, str]] = MemberIndex()
        self._routes: MemberIndex[str] = MemberIndex()  # route name -> experiments whose plan holds it
        self._plans: dict[str, TrafficPlan] = {}
        self._status: dict[str, Status] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._dirty: set[str] = set()
        self._replan_scheduled = False
        store.register(EXPERIMENTS, lambda: self.experiments)
        core.set_route_override(lambda model: self._takeover(model, ResourceType.MODEL))
        core.on_model_change(lambda model: self._member_changed(model, ResourceType.MODEL))
        core.on_route_confirmed(self._route_confirmed)
        if pipelines is not None:
            pipelines.set_route_override(lambda name: self._takeover(name, ResourceType.PIPELINE))
            pipelines.on_change(lambda name: self._member_changed(name, ResourceType.PIPELINE))

    def restore(self) -> None:
        """Reload persisted experiments and publish their routes (before the xDS port opens)."""
        self.experiments = self._store.load_kind(EXPERIMENTS)
        for experiment in self.experiments.values():
            self._index(experiment)
        for name in sorted(self.experiments):
            self._replan(name)
        log.info("experiments restored", experiments=len(self.experiments))

    # -- use cases ----------------------------------------------------------------------------------

    def start(self, message: scheduler_pb2.Experiment) -> None:
        """Create or replace an experiment; validated in full before anything changes."""
        experiment = Experiment.from_proto(message)
        self._check_member_kinds(experiment)
        kind = experiment.resource_type.kind
        if experiment.default is not None:
            others = self._defaults.owners((experiment.resource_type, experiment.default)) - {experiment.name}
            if others:
                raise InvalidResource(
                    f"{kind} {experiment.default} already in experiment {min(others)} as a baseline: "
                    f"a {kind} can only be the default of one experiment"
                )
        if experiment.name not in self.experiments and len(self.experiments) >= MAX_EXPERIMENTS:
            raise InvalidResource(
                f"experiment {experiment.name}: {MAX_EXPERIMENTS} experiments are running already; "
                "the limit (stop one first)"
            )
        previous = self.experiments.get(experiment.name)
        self.experiments[experiment.name] = experiment
        self._index(experiment)
        self._store.changed(EXPERIMENTS, experiment.name)
        log.info("experiment started", experiment=experiment.name, edit=previous is not None)
        self._replan(experiment.name, previous=previous)

    def stop(self, name: str) -> None:
        validate_name(name, kind="experiment")
        experiment = self.experiments.pop(name, None)
        if experiment is None:
            raise ExperimentNotFound(f"experiment {name} not found")
        self._members.remove(name)
        self._defaults.remove(name)
        self._store.changed(EXPERIMENTS, name)
        log.info("experiment stopped", experiment=name)
        old = self._plans.pop(name, None)
        self._routes.remove(name)
        self._status.pop(name, None)
        self._withdraw(old, keep=())
        if experiment.default is not None:
            self._reroute(experiment, experiment.default)  # the default serves alone again
        self._notify(name)

    def get(self, name: str) -> Experiment:
        validate_name(name, kind="experiment")
        experiment = self.experiments.get(name)
        if experiment is None:
            raise ExperimentNotFound(f"experiment {name} not found")
        return experiment

    def status(self, name: str) -> Status:
        self.get(name)
        return self._status[name]

    def on_change(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # -- planning -----------------------------------------------------------------------------------

    def _replan(
        self, name: str, *, previous: Experiment | None = None, new: TrafficPlan | None = None
    ) -> None:
        experiment = self.experiments[name]
        new = new or self._plan(name)
        old = self._plans.get(name)
        self._plans[name] = new
        self._routes.set(name, (r.name for r in new.routes))
        for route in new.routes:
            if route.name != experiment.default_route:
                self._core.routing.publish(route)
        self._withdraw(old, keep={r.name for r in new.routes})
        for owner in (experiment, previous):
            if owner is not None and owner.default is not None:
                self._reroute(owner, owner.default)  # takes over (or gives back) the endpoint
        self._update_status(name)

    def _reroute(self, experiment: Experiment, default: str) -> None:
        if experiment.resource_type is ResourceType.PIPELINE:
            if self._pipelines is not None:
                self._pipelines.reroute(default)
        else:
            self._core.reroute(default)

    def _check_member_kinds(self, experiment: Experiment) -> None:
        """Members name resources of the experiment's type: a known model named in a pipeline
        experiment (or the reverse) is refused, since it could never become ready. Members not
        loaded yet are accepted: the experiment turns active once they are ready."""
        pipeline = experiment.resource_type is ResourceType.PIPELINE
        if pipeline and self._pipelines is None:
            raise InvalidResource(
                f"experiment {experiment.name}: resourceType pipeline needs pipelines, "
                "which this scheduler does not serve"
            )
        for member in sorted(experiment.members):
            is_model = member in self._core.models and not self._core.models[member].deleted
            is_pipeline = self._pipelines is not None and self._pipeline_loaded(member)
            if pipeline and is_model and not is_pipeline:
                raise InvalidResource(
                    f"experiment {experiment.name}: {member!r} is a model, not a pipeline "
                    "(resourceType is pipeline: candidates, default and mirror name pipelines)"
                )
            if not pipeline and is_pipeline and not is_model:
                raise InvalidResource(
                    f"experiment {experiment.name}: {member!r} is a pipeline, not a model "
                    "(set resourceType: pipeline to experiment on pipelines)"
                )

    def _pipeline_loaded(self, name: str) -> bool:
        assert self._pipelines is not None
        record = self._pipelines.records.get(name)
        return record is not None and not record.deleted

    def _withdraw(self, old: TrafficPlan | None, *, keep: set[str] | tuple[()]) -> None:
        """Remove the routes of an old plan that the new one (or another experiment) no longer has."""
        if old is None:
            return
        owned = {r.name for p in self._plans.values() for r in p.routes}
        for route in old.routes:
            if route.name in keep or route.name in owned or self._is_member_endpoint(route.name):
                continue
            self._core.routing.publish(Route(route.name))

    def _is_member_endpoint(self, route: str) -> bool:
        """A model's or pipeline's own endpoint: given back by a reroute, never removed here."""
        if route in self._core.models:
            return True
        if self._pipelines is None or not route.endswith(PIPELINE_SUFFIX):
            return False
        return route[: -len(PIPELINE_SUFFIX)] in self._pipelines.records

    def _member(self, experiment: Experiment, name: str) -> Member:
        if experiment.resource_type is ResourceType.PIPELINE:
            return self._pipeline_member(name)
        record = self._core.models.get(name)
        if record is None or record.deleted:
            return Member(False, "no such model", None)
        state = record.latest.state
        ready = state is ModelState.ModelAvailable
        return Member(ready, "" if ready else state.value, self._core.own_route(name))

    def _pipeline_member(self, name: str) -> Member:
        if self._pipelines is None:
            return Member(False, "pipelines are not served", None)
        record = self._pipelines.records.get(name)
        if record is None or record.deleted:
            return Member(False, "no such pipeline", None)
        latest = record.latest
        if self._pipelines.ready(name):
            return Member(True, "", self._pipelines.route(record))
        running = latest.status is PipelineStatus.PipelineReady
        reason = "its models are not all available" if running else latest.status.value
        return Member(False, reason, self._pipelines.route(record))

    def _takeover(self, member: str, kind: ResourceType) -> Route | None:
        """The route that replaces ``member``'s own endpoint while an experiment with it as
        default splits."""
        for name in self._defaults.owners((kind, member)):  # at most one: a default of one experiment
            experiment = self.experiments[name]
            current = self._plans.get(name)
            route = experiment.default_route
            return current.route(route) if current is not None and route is not None else None
        return None

    def _index(self, experiment: Experiment) -> None:
        kind = experiment.resource_type
        self._members.set(experiment.name, ((kind, member) for member in experiment.members))
        default = () if experiment.default is None else ((kind, experiment.default),)
        self._defaults.set(experiment.name, default)

    # -- reacting to the core -----------------------------------------------------------------------

    def _member_changed(self, member: str, kind: ResourceType) -> None:
        touched = self._members.owners((kind, member))
        if not touched:
            return
        self._dirty |= touched
        if not self._replan_scheduled:
            self._replan_scheduled = True
            asyncio.get_running_loop().call_soon(self._replan_dirty)

    def _replan_dirty(self) -> None:
        self._replan_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for name in sorted(dirty):
            if name not in self.experiments:
                continue
            new = self._plan(name)
            if new != self._plans.get(name):
                self._replan(name, new=new)

    def _plan(self, name: str) -> TrafficPlan:
        experiment = self.experiments[name]
        return plan(experiment, {member: self._member(experiment, member) for member in experiment.members})

    def _route_confirmed(self, route: str) -> None:
        for name in sorted(self._routes.owners(route)):
            self._update_status(name)

    def _update_status(self, name: str) -> None:
        current = self._plans[name]
        held = all(self._core.routing.held(r.name) == r for r in current.routes)
        ready = current.candidates_ready and current.mirror_ready
        if ready and held:
            description = "experiment active"
        elif ready:
            description = "waiting for every Envoy to apply the experiment's routes"
        else:
            description = "; ".join(current.problems)
        status = Status(ready and held, current.candidates_ready, current.mirror_ready, description)
        if self._status.get(name) != status:
            self._status[name] = status
            log.info("experiment status", experiment=name, active=status.active, description=description)
            self._notify(name)

    def _notify(self, name: str) -> None:
        for listener in list(self._listeners):
            listener(name)
