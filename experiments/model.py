"""An experiment as meshserve holds it: validated once at the edge, immutable afterwards.

``Experiment.from_proto`` is the only way in from the wire (Seldon's ``StartExperimentRequest``);
it raises :class:`apis.validation.InvalidResource` with a message naming what is wrong, so a bad
experiment changes nothing. Rules that span experiments (one experiment per default model) live
with the registry that knows them all (``scheduler/experiments.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from apis.mlops.scheduler import scheduler_pb2
from apis.names import EXPERIMENT_SUFFIX, PIPELINE_SUFFIX
from apis.validation import InvalidResource, validate_name

# A weight is a relative share; the bound keeps sums far from any overflow and typos visible.
MAX_WEIGHT = 1_000_000
MAX_CANDIDATES = 32


class ResourceType(IntEnum):
    MODEL = scheduler_pb2.MODEL
    PIPELINE = scheduler_pb2.PIPELINE

    @property
    def kind(self) -> str:
        """The word for a member in messages: ``model`` or ``pipeline``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class Mirror:
    name: str
    percent: int  # 1..100 of the requests to the experiment's routes are copied


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    candidates: tuple[Candidate, ...]
    default: str | None = None
    mirror: Mirror | None = None
    resource_type: ResourceType = ResourceType.MODEL
    sticky_sessions: bool = False
    namespace: str = ""
    generation: int = 0

    @property
    def route_name(self) -> str:
        """The endpoint that always exists while the experiment does: ``<name>.experiment``."""
        return self.name + EXPERIMENT_SUFFIX

    @property
    def default_route(self) -> str | None:
        """The endpoint taken over while the experiment splits: the default model's own name, or
        the default pipeline's ``<p>.pipeline``."""
        return None if self.default is None else self.member_route(self.default)

    def member_route(self, member: str) -> str:
        """A member's own endpoint (``seldon-model`` value)."""
        return member + PIPELINE_SUFFIX if self.resource_type is ResourceType.PIPELINE else member

    @property
    def members(self) -> frozenset[str]:
        """Every resource the experiment routes to (candidates and mirror)."""
        return frozenset(c.name for c in self.candidates) | ({self.mirror.name} if self.mirror else set())

    @classmethod
    def from_proto(cls, message: scheduler_pb2.Experiment) -> Experiment:
        name = validate_name(message.name, kind="experiment")
        if message.resourceType not in {t.value for t in ResourceType}:
            raise InvalidResource(
                f"experiment {name}: unknown resourceType {message.resourceType} (use model or pipeline)"
            )
        resource_type = ResourceType(message.resourceType)
        kind = resource_type.kind  # members name models, or pipelines (never both)
        said = "pipeline " if resource_type is ResourceType.PIPELINE else ""  # models: as before
        candidates = _candidates(name, message.candidates, kind)
        default = (
            validate_name(message.default, kind=kind)
            if message.HasField("default") and message.default
            else None
        )
        if default is not None and default not in {c.name for c in candidates}:
            raise InvalidResource(
                f"experiment {name}: default {said}{default!r} must be one of the candidates "
                f"({', '.join(c.name for c in candidates)})"
            )
        mirror = _mirror(name, message.mirror, kind) if message.HasField("mirror") else None
        if mirror is not None and mirror.name in {c.name for c in candidates}:
            raise InvalidResource(f"experiment {name}: mirror {said}{mirror.name!r} is also a candidate")
        meta = message.kubernetesMeta
        return cls(
            name=name,
            candidates=candidates,
            default=default,
            mirror=mirror,
            resource_type=resource_type,
            sticky_sessions=message.config.stickySessions if message.HasField("config") else False,
            namespace=meta.namespace,
            generation=meta.generation,
        )

    def to_proto(self) -> scheduler_pb2.Experiment:
        message = scheduler_pb2.Experiment(
            name=self.name,
            candidates=[
                scheduler_pb2.ExperimentCandidate(name=c.name, weight=c.weight) for c in self.candidates
            ],
            resourceType=self.resource_type.value,
        )
        if self.default is not None:
            message.default = self.default
        if self.mirror is not None:
            message.mirror.CopyFrom(
                scheduler_pb2.ExperimentMirror(name=self.mirror.name, percent=self.mirror.percent)
            )
        if self.sticky_sessions:
            message.config.stickySessions = True
        if self.namespace or self.generation:
            message.kubernetesMeta.namespace = self.namespace
            message.kubernetesMeta.generation = self.generation
        return message


def _candidates(
    experiment: str, candidates: Iterable[scheduler_pb2.ExperimentCandidate], kind: str
) -> tuple[Candidate, ...]:
    found = [Candidate(validate_name(c.name, kind=kind), c.weight) for c in candidates]
    if not found:
        raise InvalidResource(f"experiment {experiment} has no candidates")
    if len(found) > MAX_CANDIDATES:
        raise InvalidResource(
            f"experiment {experiment} has {len(found)} candidates; the limit is {MAX_CANDIDATES}"
        )
    names = [c.name for c in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidResource(f"experiment {experiment}: candidate {duplicates[0]!r} is listed twice")
    for candidate in found:
        if candidate.weight > MAX_WEIGHT:
            raise InvalidResource(
                f"experiment {experiment}: weight {candidate.weight} of {candidate.name!r} "
                f"is above {MAX_WEIGHT}"
            )
    if sum(c.weight for c in found) == 0:
        raise InvalidResource(
            f"experiment {experiment}: all candidate weights are zero, no traffic could be routed"
        )
    return tuple(found)


def _mirror(experiment: str, mirror: scheduler_pb2.ExperimentMirror, kind: str) -> Mirror:
    name = validate_name(mirror.name, kind=kind)
    if not 1 <= mirror.percent <= 100:
        raise InvalidResource(f"experiment {experiment}: mirror percent must be 1..100, got {mirror.percent}")
    return Mirror(name, mirror.percent)
