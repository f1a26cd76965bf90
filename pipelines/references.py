"""The reference syntax of pipeline resources (seldon-pipelines.md §3), parsed into typed values.

Inside a pipeline ``p`` (step ``inputs`` and ``triggers``, ``output.steps``, ``tensorMap`` keys)::

    m                  -> m.outputs            the whole response of step m (§2.4 normalisation)
    m.outputs[.t]      step m's response, or only its tensor t
    m.inputs[.t]       the request sent to step m, or only its tensor t
    p                  -> p.inputs             the pipeline's own request
    p.inputs[.t]       the pipeline's own request, or only its tensor t

In ``spec.input.externalInputs`` / ``externalTriggers`` (other pipelines, never ``p`` itself)::

    q                  -> q.outputs
    q.(inputs|outputs)[.t]
    q.step.s.(inputs|outputs)[.t]

A tensor name is everything after the direction, so it may itself contain dots. Names of steps and
pipelines are DNS-1123 labels (:func:`apis.validation.validate_name`). Whether a named step exists
is not a question of syntax: :mod:`pipelines.model` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from apis.validation import InvalidResource, validate_name
from pipelines.tensors import InvalidTensor, check_tensor_name

MAX_REFERENCE_LENGTH = 512
STEP_KEYWORD = "step"


class Direction(StrEnum):
    INPUTS = "inputs"
    OUTPUTS = "outputs"


@dataclass(frozen=True, slots=True)
class Source:
    """Where messages come from: one step's requests or responses, or a pipeline's.

    In Kafka terms a source is one topic filtered to one pipeline (``…model.<step>.inputs|outputs``
    with header ``pipeline=<p>``, or ``…pipeline.<p>.inputs|outputs``).
    """

    pipeline: str
    step: str | None  # None: the pipeline's own inputs or outputs
    direction: Direction

    def __str__(self) -> str:
        if self.step is None:
            return f"{self.pipeline}.{self.direction}"
        return f"{self.pipeline}.{STEP_KEYWORD}.{self.step}.{self.direction}"


@dataclass(frozen=True, slots=True)
class Reference:
    """A source, whole (``tensor`` None) or one tensor of it."""

    source: Source
    tensor: str | None = None

    def of_tensor(self, tensor: str) -> Reference:
        return Reference(self.source, tensor)

    def text(self, pipeline: str) -> str:
        """The normalised text as written inside ``pipeline`` (what status and ``to_proto`` show)."""
        source = self.source
        if source.pipeline == pipeline and source.step is not None:
            base = f"{source.step}.{source.direction}"
        else:
            base = str(source)
        return base if self.tensor is None else f"{base}.{self.tensor}"


def parse_reference(text: str, *, pipeline: str, where: str) -> Reference:
    """A reference inside ``pipeline``: to one of its steps or to its own inputs.

    ``where`` names the field for the error (e.g. ``"step mul10 inputs[0]"``). Raises InvalidResource
    naming the pipeline, the field, the reference and what is wrong with it.
    """
    _check_text(text, pipeline=pipeline, where=where)
    head, _, rest = text.partition(".")
    try:
        name = validate_name(head, kind="step")
        direction, tensor = _direction_and_tensor(rest, bare=Direction.OUTPUTS)
    except (InvalidResource, InvalidTensor) as exc:
        raise _invalid(text, pipeline, where, str(exc), _INTERNAL_FORMS.format(p=pipeline)) from exc
    if name == pipeline:
        if rest == "":
            direction = Direction.INPUTS
        if direction is Direction.OUTPUTS:
            raise _invalid(
                text,
                pipeline,
                where,
                "a pipeline cannot read its own outputs",
                _INTERNAL_FORMS.format(p=pipeline),
            )
        return Reference(Source(pipeline, None, Direction.INPUTS), tensor)
    return Reference(Source(pipeline, name, direction), tensor)


def parse_external_reference(text: str, *, pipeline: str, where: str) -> Reference:
    """A reference in ``spec.input``: another pipeline's inputs, outputs, or one of its steps."""
    _check_text(text, pipeline=pipeline, where=where)
    head, _, rest = text.partition(".")
    step: str | None = None
    try:
        other = validate_name(head, kind="pipeline")
        keyword, _, after = rest.partition(".")
        if keyword == STEP_KEYWORD:
            step_name, _, rest = after.partition(".")
            step = validate_name(step_name, kind="step")
            if not rest:
                raise InvalidResource(f"give inputs or outputs after the step name {step!r}")
        direction, tensor = _direction_and_tensor(rest, bare=Direction.OUTPUTS)
    except (InvalidResource, InvalidTensor) as exc:
        raise _invalid(text, pipeline, where, str(exc), _EXTERNAL_FORMS) from exc
    if other == pipeline:
        raise _invalid(
            text,
            pipeline,
            where,
            f"it names pipeline {pipeline} itself; external inputs come from other pipelines",
            _EXTERNAL_FORMS,
        )
    return Reference(Source(other, step, direction), tensor)


_INTERNAL_FORMS = "use <step>, <step>.inputs|outputs[.<tensor>] or {p}.inputs[.<tensor>]"
_EXTERNAL_FORMS = (
    "use <pipeline>.inputs|outputs[.<tensor>] or <pipeline>.step.<step>.inputs|outputs[.<tensor>]"
)


def _direction_and_tensor(rest: str, *, bare: Direction) -> tuple[Direction, str | None]:
    if rest == "":
        return bare, None
    word, dot, tensor = rest.partition(".")
    if word not in {d.value for d in Direction}:
        raise InvalidResource(f"{word!r} must be inputs or outputs")
    if dot and not tensor:
        raise InvalidResource("the tensor name after the last '.' is empty")
    return Direction(word), check_tensor_name(tensor) if tensor else None


def _check_text(text: str, *, pipeline: str, where: str) -> None:
    if not text:
        raise InvalidResource(f"pipeline {pipeline}: {where}: the reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidResource(
            f"pipeline {pipeline}: {where}: a reference is {len(text)} characters long; "
            f"the limit is {MAX_REFERENCE_LENGTH}"
        )


def _invalid(text: str, pipeline: str, where: str, why: str, forms: str) -> InvalidResource:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return InvalidResource(f"pipeline {pipeline}: {where}: reference {shown!r} is invalid: {why} ({forms})")
