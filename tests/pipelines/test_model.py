"""Pipeline validation: every rule says what is wrong; a valid pipeline round-trips normalised."""

from __future__ import annotations

from typing import Any

import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource
from pipelines import model, validation
from pipelines.model import Pipeline
from pipelines.parts import Batch, JoinType
from pipelines.references import Direction, Reference, Source


def step(name: str, **fields: Any) -> scheduler_pb2.PipelineStep:
    return scheduler_pb2.PipelineStep(name=name, **fields)


def pipeline(*steps: scheduler_pb2.PipelineStep, name: str = "p", **fields: Any) -> scheduler_pb2.Pipeline:
    return scheduler_pb2.Pipeline(name=name, steps=list(steps) or [step("a")], **fields)


def output(*steps: str, **fields: Any) -> scheduler_pb2.PipelineOutput:
    return scheduler_pb2.PipelineOutput(steps=list(steps), **fields)


CHAIN = pipeline(
    step("b", inputs=["a"], tensorMap={"a.outputs.OUTPUT0": "INPUT0"}, joinWindowMs=5),
    step("a"),
    output=output("b"),
)


def test_a_valid_pipeline_is_normalised_and_round_trips() -> None:
    built = Pipeline.from_proto(CHAIN)
    assert [s.name for s in built.steps] == ["a", "b"]  # sorted, as the reference's status shows them
    b = built.step("b")
    assert b.inputs == (Reference(Source("p", "a", Direction.OUTPUTS)),)
    assert b.join_window_ms == 5 and b.inputs_join is JoinType.INNER
    assert built.inputs_of(built.step("a")) == (Reference(built.inputs_source),)
    assert built.route_name == "p.pipeline" and built.models == {"a", "b"}
    proto = built.to_proto()
    assert list(proto.steps[1].inputs) == ["a.outputs"] and list(proto.output.steps) == ["b.outputs"]
    assert dict(proto.steps[1].tensorMap) == {"a.outputs.OUTPUT0": "INPUT0"}
    assert Pipeline.from_proto(proto) == built


def test_every_field_round_trips() -> None:
    message = pipeline(
        step(
            "a",
            inputs=["p.inputs.x"],
            triggers=["p.inputs.go"],
            inputsJoin=scheduler_pb2.PipelineStep.OUTER,
            triggersJoin=scheduler_pb2.PipelineStep.ANY,
            tensorMap={"p.inputs.x": "INPUT"},
        ),
        step("drift", batch=scheduler_pb2.Batch(size=20, windowMs=100)),
        name="p",
        uid="cg5fm6c6dpcs73c4qhe0",
        version=3,
        output=output("a.outputs.y", stepsJoin=scheduler_pb2.PipelineOutput.ANY, joinWindowMs=7),
        input=scheduler_pb2.PipelineInput(
            externalInputs=["q.step.s.outputs.t"],
            externalTriggers=["r"],
            joinType=scheduler_pb2.PipelineInput.OUTER,
            triggersJoin=scheduler_pb2.PipelineInput.ANY,
            joinWindowMs=9,
            tensorMap={"q.step.s.outputs.t": "x"},
        ),
        dataflowSpec=scheduler_pb2.DataflowSpec(cleanTopicsOnDelete=True),
        kubernetesMeta=scheduler_pb2.KubernetesMeta(namespace="seldon-mesh", generation=4),
    )
    built = Pipeline.from_proto(message)
    assert built.step("drift").batch == Batch(size=20, window_ms=100) and built.step("a").batch is None
    assert built.input is not None and built.input.external_triggers == (
        Reference(Source("r", None, Direction.OUTPUTS)),
    )
    assert built.clean_topics_on_delete and built.namespace == "seldon-mesh" and built.version == 3
    assert Pipeline.from_proto(built.to_proto()) == built
    assert list(built.to_proto().input.externalTriggers) == ["r.outputs"]


CYCLE = [
    step("counter", inputs=["p.inputs", "loop.outputs"], inputsJoin=scheduler_pb2.PipelineStep.ANY),
    step("loop", inputs=["counter.outputs.output"], triggers=["counter.outputs.continue"]),
]


def test_a_cycle_is_allowed_with_allow_cycles_and_revisits() -> None:
    built = Pipeline.from_proto(pipeline(*CYCLE, allowCycles=True, maxStepRevisits=100))
    assert built.allow_cycles and built.max_step_revisits == 100


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (pipeline(name="P"), "pipeline name 'P' is invalid"),
        (scheduler_pb2.Pipeline(name="p"), "pipeline p has no steps"),
        (pipeline(*[step(f"s{i}") for i in range(257)]), "has 257 steps; the limit is 256"),
        (pipeline(step("a"), step("a")), "pipeline p: step a is defined twice"),
        (pipeline(step("p")), "step p has the pipeline's own name"),
        (pipeline(step("A")), "pipeline p: step name 'A' is invalid"),
        (pipeline(step("b", inputs=["a"])), "step b inputs: 'a.outputs' names step a, which the pipeline"),
        (pipeline(step("b", triggers=["x.outputs.t"])), "step b triggers: 'x.outputs.t' names step x"),
        (pipeline(step("a", inputs=["p.inputs.x", "p.inputs."])), "after the last '.' is empty"),
        (pipeline(step("a", inputs=["p.outputs"])), "step a inputs[0]: reference 'p.outputs' is invalid"),
        (pipeline(step("a", inputs=["p", "p.inputs"])), "'p.inputs' is listed twice in inputs"),
        (
            pipeline(step("a", inputs=["p.inputs.x"], triggers=["p.inputs.x"])),
            "is both an input and a trigger",
        ),
        (pipeline(step("a", inputs=["p"] * 65)), "step a inputs has 65 entries; the limit is 64"),
        (pipeline(step("a", inputsJoin=7)), "pipeline p: step a: inputsJoin 7 is unknown"),
        (pipeline(step("a", triggersJoin=3)), "step a: triggersJoin 3 is unknown"),
        (pipeline(step("a", joinWindowMs=600_001)), "step a: joinWindowMs 600001 is above the limit"),
        (pipeline(step("a", batch=scheduler_pb2.Batch(size=0))), "batch.size 0 must be within 1..10000"),
        (pipeline(step("a", batch=scheduler_pb2.Batch(windowMs=10**6))), "batch.windowMs 1000000 is above"),
        (
            pipeline(step("a", batch=scheduler_pb2.Batch(size=2)), step("b", inputs=["a"])),
            "step b: 'a.outputs' reads step a, which has batch: a batched step is an asynchronous branch",
        ),
        (
            pipeline(step("a", batch=scheduler_pb2.Batch(size=2)), step("b", triggers=["a.inputs.x"])),
            "step b: 'a.inputs.x' reads step a, which has batch",
        ),
        (
            pipeline(step("a", batch=scheduler_pb2.Batch(size=2)), output=output("a.outputs.y")),
            "output steps: 'a.outputs.y' reads step a, which has batch",
        ),
        (pipeline(step("a", tensorMap={"p.inputs": "x"})), "key 'p.inputs' names no tensor"),
        (pipeline(step("a", tensorMap={"p.inputs.x": ""})), "'p.inputs.x': the new name is empty"),
        (
            pipeline(step("b", inputs=["a.outputs.X"], tensorMap={"a.outputs.Y": "I"}), step("a")),
            "key 'a.outputs.Y' matches none of the inputs (a.outputs.X)",
        ),
        (pipeline(step("a", tensorMap={"z.outputs.t": "x"})), "step a tensorMap: 'z.outputs.t' names step z"),
        (pipeline(step("a", tensorMap={f"p.inputs.t{i}": "x" for i in range(257)})), "the limit is 256"),
        (pipeline(output=output()), "output has no steps"),
        (pipeline(output=output("b")), "output steps: 'b.outputs' names step b"),
        (pipeline(output=output("p.inputs")), "output steps[0]: 'p.inputs' is not a step"),
        (pipeline(output=output("a", "a.outputs")), "pipeline p: output: 'a.outputs' is listed twice"),
        (pipeline(output=output("a", stepsJoin=5)), "output stepsJoin 5 is unknown"),
        (pipeline(output=output("a", tensorMap={"a.outputs.t": "\x00"})), "contains a control character"),
        (
            pipeline(output=output("a.outputs.t", tensorMap={"a.outputs.u": "v"})),
            "output tensorMap: key 'a.outputs.u' matches none",
        ),
        (pipeline(input=scheduler_pb2.PipelineInput()), "input has no externalInputs"),
        (
            pipeline(input=scheduler_pb2.PipelineInput(externalInputs=["p.outputs"])),
            "it names pipeline p itself",
        ),
        (
            pipeline(input=scheduler_pb2.PipelineInput(externalInputs=["q"], tensorMap={"r.outputs.t": "x"})),
            "input tensorMap: key 'r.outputs.t' matches none of the inputs (q.outputs)",
        ),
        (
            pipeline(input=scheduler_pb2.PipelineInput(externalInputs=["q"], joinType=4)),  # type: ignore[arg-type]
            "input joinType 4 is unknown",
        ),
        (pipeline(*CYCLE), "pipeline p has a cycle (counter -> loop -> counter); set allowCycles"),
        (pipeline(step("a", inputs=["a"])), "has a cycle (a -> a)"),
        (pipeline(*CYCLE, allowCycles=True), "but maxStepRevisits is 0"),
        (pipeline(maxStepRevisits=10_001), "maxStepRevisits 10001 is above the limit of 10000"),
        (pipeline(uid="x" * 65), "uid must be at most 64"),
        (pipeline(kubernetesMeta=scheduler_pb2.KubernetesMeta(namespace="Bad")), "namespace name 'Bad'"),
        (pipeline(kubernetesMeta=scheduler_pb2.KubernetesMeta(generation=-1)), "generation (-1) must be"),
        (
            pipeline(step("a", tensorMap={f"p.inputs.{i}" + "x" * 4000: "y" for i in range(300)})),
            "bytes serialized; the limit is",
        ),
    ],
)
def test_invalid_pipelines_are_refused_with_a_reason(bad: scheduler_pb2.Pipeline, says: str) -> None:
    with pytest.raises(InvalidResource) as caught:
        Pipeline.from_proto(bad)
    assert says in str(caught.value)


def test_a_long_cycle_is_named_in_the_datas_direction() -> None:
    steps = [step("s0", inputs=["p", "s2"]), step("s1", inputs=["s0"]), step("s2", inputs=["s1"])]
    with pytest.raises(InvalidResource, match="s0 -> s1 -> s2 -> s0"):
        Pipeline.from_proto(pipeline(*steps))


def test_limits_are_the_documented_ones() -> None:
    assert (model.MAX_STEPS, validation.MAX_JOIN_WINDOW_MS, model.MAX_STEP_REVISITS) == (256, 600_000, 10_000)
