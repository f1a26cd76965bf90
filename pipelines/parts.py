"""A pipeline's parts as immutable values: its steps, its input and output stages, and what they share.

Joins (:class:`JoinType`), tensor renames (:class:`TensorMap`) and batching (:class:`Batch`). They
hold what :mod:`pipelines.validation` parsed and checked; :class:`pipelines.model.Pipeline` puts
them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from apis.validation import InvalidResource
from pipelines.references import Reference

MAX_BATCH_SIZE = 10_000  # also the cap of a batch that only a window bounds


class JoinType(StrEnum):
    """How a node combines several inputs (or triggers): the CRD's spelling, proto values 0..2."""

    INNER = "inner"  # every reference must have data
    OUTER = "outer"  # whatever arrived when the join window ends
    ANY = "any"  # the first reference with data

    @classmethod
    def from_proto(cls, value: int, *, where: str) -> JoinType:
        try:
            return _JOINS[value]
        except KeyError:
            raise InvalidResource(f"{where} {value} is unknown (use INNER=0, OUTER=1 or ANY=2)") from None

    def to_proto(self) -> int:
        return _JOINS_BACK[self]


_JOINS = {0: JoinType.INNER, 1: JoinType.OUTER, 2: JoinType.ANY}
_JOINS_BACK = {join: value for value, join in _JOINS.items()}


@dataclass(frozen=True, slots=True)
class TensorMap:
    """``tensorMap``: a full tensor reference to the name the consumer sees; others keep theirs."""

    entries: tuple[tuple[Reference, str], ...] = ()

    def name_for(self, reference: Reference, name: str) -> str:
        """The name tensor ``name`` of ``reference``'s source gets (``reference`` may be whole)."""
        wanted = reference.of_tensor(name)
        return next((new for key, new in self.entries if key == wanted), name)

    def text(self, pipeline: str) -> dict[str, str]:
        return {key.text(pipeline): new for key, new in self.entries}


@dataclass(frozen=True, slots=True)
class Batch:
    size: int | None = None
    window_ms: int | None = None
    # The CRD and chainer.proto have ``rolling``; the scheduler API's Batch does not carry it, so a
    # pipeline loaded through the scheduler never has it set (apis.manifests refuses rolling: true).
    rolling: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    name: str  # also the model it calls
    inputs: tuple[Reference, ...] = ()  # as written, normalised; () means the pipeline's inputs
    triggers: tuple[Reference, ...] = ()
    tensor_map: TensorMap = field(default_factory=TensorMap)
    inputs_join: JoinType = JoinType.INNER
    triggers_join: JoinType = JoinType.INNER
    join_window_ms: int | None = None
    batch: Batch | None = None


@dataclass(frozen=True, slots=True)
class Output:
    steps: tuple[Reference, ...]
    steps_join: JoinType = JoinType.INNER
    join_window_ms: int = 0
    tensor_map: TensorMap = field(default_factory=TensorMap)


@dataclass(frozen=True, slots=True)
class Input:
    external_inputs: tuple[Reference, ...] = ()
    external_triggers: tuple[Reference, ...] = ()
    join_type: JoinType = JoinType.INNER
    triggers_join: JoinType = JoinType.INNER
    join_window_ms: int | None = None
    tensor_map: TensorMap = field(default_factory=TensorMap)
