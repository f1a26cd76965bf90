"""Reference syntax (seldon-pipelines.md §3): every form, its normalisation, and bad syntax."""

from __future__ import annotations

import pytest

from apis.validation import InvalidResource
from pipelines.references import (
    Direction,
    Reference,
    Source,
    parse_external_reference,
    parse_reference,
)

IN, OUT = Direction.INPUTS, Direction.OUTPUTS


@pytest.mark.parametrize(
    ("text", "expected", "normalised"),
    [
        ("m", Reference(Source("p", "m", OUT)), "m.outputs"),
        ("m.outputs", Reference(Source("p", "m", OUT)), "m.outputs"),
        ("m.outputs.t", Reference(Source("p", "m", OUT), "t"), "m.outputs.t"),
        ("m.inputs", Reference(Source("p", "m", IN)), "m.inputs"),
        ("m.inputs.INPUT0", Reference(Source("p", "m", IN), "INPUT0"), "m.inputs.INPUT0"),
        ("m.outputs.a.b", Reference(Source("p", "m", OUT), "a.b"), "m.outputs.a.b"),
        ("p", Reference(Source("p", None, IN)), "p.inputs"),
        ("p.inputs", Reference(Source("p", None, IN)), "p.inputs"),
        ("p.inputs.ok1", Reference(Source("p", None, IN), "ok1"), "p.inputs.ok1"),
    ],
)
def test_references_inside_a_pipeline(text: str, expected: Reference, normalised: str) -> None:
    reference = parse_reference(text, pipeline="p", where="step s inputs[0]")
    assert reference == expected
    assert reference.text("p") == normalised


@pytest.mark.parametrize(
    ("text", "expected", "normalised"),
    [
        ("q", Reference(Source("q", None, OUT)), "q.outputs"),
        ("q.outputs", Reference(Source("q", None, OUT)), "q.outputs"),
        ("q.inputs.t", Reference(Source("q", None, IN), "t"), "q.inputs.t"),
        ("q.step.s.outputs", Reference(Source("q", "s", OUT)), "q.step.s.outputs"),
        ("q.step.s.inputs.OUTPUT0", Reference(Source("q", "s", IN), "OUTPUT0"), "q.step.s.inputs.OUTPUT0"),
    ],
)
def test_external_references(text: str, expected: Reference, normalised: str) -> None:
    reference = parse_external_reference(text, pipeline="p", where="input externalInputs[0]")
    assert reference == expected
    assert reference.text("p") == normalised
    assert str(reference.source) == normalised.removesuffix(".t").removesuffix(".OUTPUT0")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "the reference is empty"),
        ("m.output", "'output' must be inputs or outputs"),
        ("m.outputs.", "the tensor name after the last '.' is empty"),
        ("M", "step name 'M' is invalid"),
        (".outputs", "step name is empty"),
        ("m..outputs", "'' must be inputs or outputs"),
        ("p.outputs", "a pipeline cannot read its own outputs"),
        ("m.outputs.a\nb", "contains a control character"),
        ("m." + "x" * 600, "the limit is 512"),
    ],
)
def test_bad_references_name_the_pipeline_field_and_reference(text: str, says: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_reference(text, pipeline="p", where="step s inputs[1]")
    message = str(caught.value)
    assert message.startswith("pipeline p: step s inputs[1]: ")
    assert says in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("p.outputs", "it names pipeline p itself"),
        ("q.step.s", "give inputs or outputs after the step name 's'"),
        ("q.step.S.outputs", "step name 'S' is invalid"),
        ("q.stage.outputs", "'stage' must be inputs or outputs"),
        ("Q.outputs", "pipeline name 'Q' is invalid"),
    ],
)
def test_bad_external_references(text: str, says: str) -> None:
    with pytest.raises(InvalidResource, match="pipeline p: input externalInputs\\[0\\]: ") as caught:
        parse_external_reference(text, pipeline="p", where="input externalInputs[0]")
    assert says in str(caught.value)
