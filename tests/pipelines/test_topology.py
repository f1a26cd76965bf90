"""The engine on the reference's scenarios (seldon-pipelines.md §13) with in-process fake models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from apis import manifests
from pipelines.executor import execute, execute_external
from pipelines.model import Pipeline
from pipelines.references import Direction, Source
from pipelines.tensors import Message, Tensor
from pipelines.topology import NoOutput, RevisitLimitExceeded, RunState, StepFailed, Topology
from tests.pipelines.fakes import (
    Models,
    Recorder,
    add10,
    broken,
    conditional,
    counter,
    identity,
    mul10,
    nothing,
    slow,
    tensor,
    tfsimple,
)

SAMPLES = Path(__file__).parents[2] / "samples" / "pipelines"
I = list(range(1, 17))  # noqa: E741 - the reference's name
D = [2 * x for x in I]
Z = [0] * 16
Q = [4 * x for x in I]
TFSIMPLE = {f"tfsimple{n}": tfsimple for n in (1, 2, 3)}
ARITH = {"add10": add10, "mul10": mul10, "conditional": conditional}


def load(file: str, name: str | None = None) -> Pipeline:
    requests = manifests.read_pipeline_requests(str(SAMPLES / file), check=Pipeline.from_proto)
    chosen = [r for r in requests if name is None or r.pipeline.name == name]
    return Pipeline.from_proto(chosen[0].pipeline)


def from_yaml(text: str) -> Pipeline:
    requests = manifests.parse_pipeline_requests(text, source="test.yaml", check=Pipeline.from_proto)
    return Pipeline.from_proto(requests[0].pipeline)


def ints(*values: list[int]) -> Message:
    return tuple(tensor(f"INPUT{n}", v, "INT32") for n, v in enumerate(values))


def data(message: Message) -> list[tuple[str, object]]:
    return [(t.name, t.data) for t in message]


async def test_single_step_pipeline_answers_with_the_models_outputs() -> None:
    recorder = Recorder()
    result = await execute(
        Topology(load("tfsimple.yaml")), ints(I, I), call_model=Models(TFSIMPLE), observer=recorder
    )
    assert data(result.require_output()) == [("OUTPUT0", D), ("OUTPUT1", Z)]
    assert result.output is not None and result.output[0].shape == (1, 16)
    assert result.runs == {"tfsimple1": 1}
    assert recorder.sources() == [
        "tfsimple.inputs",
        "tfsimple.step.tfsimple1.inputs",
        "tfsimple.step.tfsimple1.outputs",
        "tfsimple.outputs",
    ]


async def test_chain_renames_tensors_and_every_message_is_observed_in_order() -> None:
    recorder = Recorder()
    result = await execute(
        Topology(load("chain.yaml")), ints(I, I), call_model=Models(TFSIMPLE), observer=recorder
    )
    assert data(result.require_output()) == [("OUTPUT0", D), ("OUTPUT1", D)]
    assert [(str(s), data(m)) for s, m in recorder.messages] == [
        ("tfsimples.inputs", [("INPUT0", I), ("INPUT1", I)]),
        ("tfsimples.step.tfsimple1.inputs", [("INPUT0", I), ("INPUT1", I)]),
        ("tfsimples.step.tfsimple1.outputs", [("OUTPUT0", D), ("OUTPUT1", Z)]),
        ("tfsimples.step.tfsimple2.inputs", [("INPUT0", D), ("INPUT1", Z)]),
        ("tfsimples.step.tfsimple2.outputs", [("OUTPUT0", D), ("OUTPUT1", D)]),
        ("tfsimples.outputs", [("OUTPUT0", D), ("OUTPUT1", D)]),
    ]


async def test_a_step_can_read_another_steps_inputs() -> None:
    result = await execute(
        Topology(load("tensor-inputs.yaml", "tfsimples-input")), ints(I, I), call_model=Models(TFSIMPLE)
    )
    assert data(result.require_output()) == [("OUTPUT0", I), ("OUTPUT1", I)]


async def test_inner_join_of_two_models_calls_the_joining_step_once() -> None:
    models = Models(TFSIMPLE)
    result = await execute(Topology(load("join.yaml")), ints(I, I), call_model=models)
    assert data(result.require_output()) == [("OUTPUT0", D), ("OUTPUT1", D)]
    assert data(models.called("tfsimple3")[0]) == [("INPUT0", D), ("INPUT1", Z)]
    assert result.runs == {"tfsimple1": 1, "tfsimple2": 1, "tfsimple3": 1}


@pytest.mark.parametrize(
    ("choice", "expected", "idle"), [(0, [10, 20, 30, 40], "add10"), (1, [11, 12, 13, 14], "mul10")]
)
async def test_conditional_runs_only_the_chosen_branch(choice: int, expected: list[int], idle: str) -> None:
    models, recorder = Models(ARITH), Recorder()
    request = (
        tensor("CHOICE", [choice], "INT32"),
        tensor("INPUT0", [1, 2, 3, 4]),
        tensor("INPUT1", [1, 2, 3, 4]),
    )
    result = await execute(Topology(load("conditional.yaml")), request, call_model=models, observer=recorder)
    output = result.require_output()
    assert data(output) == [("OUTPUT", expected)] and output[0].shape == (4,)
    assert models.called(idle) == []
    assert f"tfsimple-conditional.step.{idle}.inputs" not in recorder.sources()


async def test_steps_read_single_pipeline_input_tensors_and_the_output_keeps_their_order() -> None:
    request = (tensor("INPUT0", [1, 2, 3, 4]), tensor("INPUT1", [1, 2, 3, 4]))
    result = await execute(
        Topology(load("tensor-inputs.yaml", "pipeline-inputs")), request, call_model=Models(ARITH)
    )
    assert data(result.require_output()) == [("OUTPUT", [10, 20, 30, 40]), ("OUTPUT", [11, 12, 13, 14])]


@pytest.mark.parametrize(
    ("trigger", "expected", "ran"),
    [
        ("ok1", [10, 20, 30, 40], "mul10"),
        ("ok2", [10, 20, 30, 40], "mul10"),
        ("ok3", [11, 12, 13, 14], "add10"),
    ],
)
async def test_triggers_gate_steps_and_are_not_passed_on(trigger: str, expected: list[int], ran: str) -> None:
    models = Models(ARITH)
    request = (tensor(trigger, [1]), tensor("INPUT", [1, 2, 3, 4]))
    result = await execute(Topology(load("triggers.yaml")), request, call_model=models)
    assert data(result.require_output()) == [("OUTPUT", expected)]
    assert result.runs == {ran: 1}
    assert [t.name for t in models.called(ran)[0]] == ["INPUT"]


async def test_without_any_trigger_nothing_runs_and_there_is_no_output() -> None:
    result = await execute(
        Topology(load("triggers.yaml")), (tensor("INPUT", [1, 2, 3, 4]),), call_model=Models(ARITH)
    )
    assert result.output is None and result.runs == {}
    with pytest.raises(NoOutput, match="pipeline trigger-joins produced no output"):
        result.require_output()


async def test_inner_trigger_join_needs_every_trigger() -> None:
    text = (SAMPLES / "triggers.yaml").read_text().replace("triggersJoinType: any", "triggersJoinType: inner")
    topology = Topology(from_yaml(text))
    alone = await execute(topology, (tensor("ok1", [1]), tensor("INPUT", [1.0])), call_model=Models(ARITH))
    assert alone.runs == {}
    both = await execute(
        topology, (tensor("ok1", [1]), tensor("ok2", [1]), tensor("INPUT", [1.0])), call_model=Models(ARITH)
    )
    assert data(both.require_output()) == [("OUTPUT", [10.0])]


async def test_pipelines_read_other_pipelines_with_the_same_request() -> None:
    """Scenarios 16-19: the upstream run's messages feed the downstream pipelines (the Kafka path)."""
    upstream = Recorder()
    headers = {"x-request-id": "test-id"}
    first = await execute(
        Topology(load("tfsimple.yaml")), ints(I, I), call_model=Models(TFSIMPLE), observer=upstream
    )
    assert data(first.require_output()) == [("OUTPUT0", D), ("OUTPUT1", Z)]

    async def downstream(name: str, messages: list[tuple[Source, Message]]) -> tuple[Message, Recorder]:
        topology = Topology(load("pipeline-to-pipeline.yaml", name))
        arrivals = [(s, m) for s, m in messages if s in topology.external_sources]
        recorder, models = Recorder(), Models(TFSIMPLE)
        result = await execute_external(
            topology, arrivals, call_model=models, headers=headers, observer=recorder
        )
        assert all(h == headers for _, _, h in models.calls)
        return result.require_output(), recorder

    extended, _ = await downstream("tfsimple-extended", upstream.messages)
    assert data(extended) == [("OUTPUT0", D), ("OUTPUT1", D)]
    by_step, _ = await downstream("tfsimple-extended-step", upstream.messages)
    assert data(by_step) == [("OUTPUT0", D), ("OUTPUT1", D)]
    both = [
        (Source("tfsimple-extended", None, Direction.OUTPUTS), extended),
        (Source("tfsimple-extended2", None, Direction.OUTPUTS), extended),
    ]
    combined, _ = await downstream("tfsimple-combined", both)
    assert data(combined) == [("OUTPUT0", Q), ("OUTPUT1", Z)]
    triggered, recorder = await downstream("tfsimple-combined-trigger", both)
    assert data(triggered) == [("OUTPUT0", Q), ("OUTPUT1", Z)]
    assert data(recorder.messages[0][1]) == [("INPUT0", D), ("INPUT1", D)]  # trigger data not passed
    assert str(recorder.messages[0][0]) == "tfsimple-combined-trigger.inputs"
    topology = Topology(load("pipeline-to-pipeline.yaml", "tfsimple-combined-trigger"))
    untriggered = await execute_external(topology, both[:1], call_model=Models(TFSIMPLE))
    assert untriggered.output is None


async def test_external_arrivals_must_be_read_by_the_pipeline() -> None:
    topology = Topology(load("pipeline-to-pipeline.yaml", "tfsimple-extended"))
    with pytest.raises(ValueError, match=r"does not read other\.outputs"):
        await execute_external(
            topology, [(Source("other", None, Direction.OUTPUTS), ints(I))], call_model=Models(TFSIMPLE)
        )


CYCLE_MODELS = {"counter": counter, "identity-loop": identity, "identity-output": identity}


@pytest.mark.parametrize(("start", "answer", "runs"), [(0, 10, 10), (15, 16, 1)])
async def test_the_cyclic_counter_loops_until_it_says_stop(start: int, answer: int, runs: int) -> None:
    request = (Tensor("counter-pipeline.inputs", "INT32", (1,), [start]),)
    result = await execute(Topology(load("cycle.yaml")), request, call_model=Models(CYCLE_MODELS))
    assert data(result.require_output()) == [("output", [answer]), ("stop", [""])]
    assert result.runs == {"counter": runs, "identity-output": 1} | (
        {"identity-loop": runs - 1} if runs > 1 else {}
    )


async def test_a_loop_beyond_max_step_revisits_fails_the_request_naming_the_step() -> None:
    text = (SAMPLES / "cycle.yaml").read_text().replace("maxStepRevisits: 100", "maxStepRevisits: 5")
    request = (Tensor("counter-pipeline.inputs", "INT32", (1,), [0]),)
    with pytest.raises(RevisitLimitExceeded, match="step counter would run a 7th time") as caught:
        await execute(Topology(from_yaml(text)), request, call_model=Models(CYCLE_MODELS))
    assert caught.value.step == "counter" and caught.value.pipeline == "counter-pipeline"


def window_pipeline(join: str, window: int | None) -> Topology:
    return Topology(
        from_yaml(
            f"""
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {{name: windows}}
spec:
  steps:
  - name: add10
  - name: mul10
  - name: combine
    inputs: [add10.outputs.OUTPUT, mul10.outputs.OUTPUT]
    tensorMap: {{add10.outputs.OUTPUT: A, mul10.outputs.OUTPUT: B}}
    inputsJoinType: {join}
    {"" if window is None else f"joinWindowMs: {window}"}
  output: {{steps: [combine]}}
"""
        )
    )


async def timed(topology: Topology, models: Models) -> tuple[Message | None, float, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    answered: list[float] = []
    request = (tensor("INPUT", [1.0]),)
    result = await execute(
        topology, request, call_model=models, on_output=lambda _: answered.append(loop.time())
    )
    return result.output, (answered[0] - start if answered else -1.0), loop.time() - start


def late_mul10() -> Models:
    return Models({"add10": add10, "mul10": slow(mul10, 0.3), "combine": identity})


async def test_outer_join_fires_when_its_window_ends_with_what_arrived() -> None:
    output, answered, finished = await timed(window_pipeline("outer", 50), late_mul10())
    assert output is not None and data(output) == [("A", [11.0])]
    assert 0.05 <= answered < 0.25 and finished >= 0.3  # the late branch still ran to its end


async def test_outer_join_without_a_window_waits_for_every_input_or_the_end() -> None:
    output, answered, _ = await timed(window_pipeline("outer", None), late_mul10())
    assert output is not None and data(output) == [("A", [11.0]), ("B", [10.0])] and answered >= 0.3
    stopped = Models({"add10": add10, "mul10": nothing, "combine": identity})
    output, _, _ = await timed(window_pipeline("outer", None), stopped)
    assert output is not None and data(output) == [("A", [11.0])]


async def test_inner_join_drops_data_older_than_its_window() -> None:
    output, _, _ = await timed(window_pipeline("inner", 50), late_mul10())
    assert output is None


async def test_any_join_fires_on_the_first_arrival_and_only_once_without_cycles() -> None:
    models = late_mul10()
    output, answered, _ = await timed(window_pipeline("any", None), models)
    assert output is not None and data(output) == [("A", [11.0])] and answered < 0.25
    assert len(models.called("combine")) == 1


async def test_an_empty_response_stops_the_branch() -> None:
    models = Models({"tfsimple1": nothing, "tfsimple2": tfsimple})
    recorder = Recorder()
    result = await execute(Topology(load("chain.yaml")), ints(I, I), call_model=models, observer=recorder)
    assert result.output is None and result.runs == {"tfsimple1": 1}
    assert recorder.messages[-1] == (Source("tfsimples", "tfsimple1", Direction.OUTPUTS), ())


async def test_a_failing_step_fails_the_request_and_cancels_the_other_calls() -> None:
    models = Models({"tfsimple1": broken, "tfsimple2": slow(tfsimple, 10), "tfsimple3": tfsimple})
    failed = "pipeline join: step tfsimple1 failed: model server said 500"
    with pytest.raises(StepFailed, match=failed) as caught:
        await execute(Topology(load("join.yaml")), ints(I, I), call_model=models)
    assert caught.value.step == "tfsimple1"
    assert models.cancelled == ["tfsimple2"]


async def test_a_callers_deadline_cancels_every_model_call() -> None:
    models = Models(dict.fromkeys(("tfsimple1", "tfsimple2", "tfsimple3"), slow(tfsimple, 10)))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await execute(Topology(load("join.yaml")), ints(I, I), call_model=models)
    assert sorted(models.cancelled) == ["tfsimple1", "tfsimple2"]


async def test_the_output_is_handed_over_before_asynchronous_branches_end() -> None:
    pipeline = from_yaml(
        """
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: with-drift}
spec:
  steps: [{name: add10}, {name: mul10}]
  output: {steps: [add10]}
"""
    )
    models = Models({"add10": add10, "mul10": slow(mul10, 0.2)})
    output, answered, finished = await timed(Topology(pipeline), models)
    assert output is not None and answered < 0.15 and finished >= 0.2
    assert len(models.called("mul10")) == 1


async def test_headers_reach_every_model_call() -> None:
    models = Models(TFSIMPLE)
    headers = {"x-request-id": "abc", "x-foo": "bar"}
    await execute(Topology(load("chain.yaml")), ints(I, I), call_model=models, headers=headers)
    assert [h for _, _, h in models.calls] == [headers, headers]


DRIFT = """
apiVersion: mlops.seldon.io/v1alpha1
kind: Pipeline
metadata: {name: drift}
spec:
  steps: [{name: tfsimple1}, {name: tfsimple2, inputs: [tfsimple1], batch: {size: 20}}]
  output: {steps: [tfsimple1]}
"""


async def test_a_batched_step_goes_to_the_batch_sink_and_the_run_does_not_wait_for_it() -> None:
    """Scenario 32's shape: the output lists the other steps; the batched step's input is handed
    over (not called, not recorded per request: the batch is) and the run ends without it."""
    taken: list[tuple[str, Message, dict[str, str]]] = []
    models, recorder = Models(TFSIMPLE), Recorder()
    result = await execute(
        Topology(from_yaml(DRIFT)),
        ints(I, I),
        call_model=models,
        observer=recorder,
        headers={"x-request-id": "r1"},
        batch=lambda step, tensors, headers: taken.append((step, tensors, dict(headers))),
    )
    assert data(result.require_output()) == [("OUTPUT0", D), ("OUTPUT1", Z)]
    assert [(step, data(tensors), headers) for step, tensors, headers in taken] == [
        ("tfsimple2", [("OUTPUT0", D), ("OUTPUT1", Z)], {"x-request-id": "r1"})
    ]
    assert [m for m, _, _ in models.calls] == ["tfsimple1"]
    assert result.runs == {"tfsimple1": 1, "tfsimple2": 1}
    assert "drift.step.tfsimple2.inputs" not in recorder.sources()


async def test_a_batched_pipeline_needs_a_batch_sink() -> None:
    with pytest.raises(ValueError, match=r"batched steps \(tfsimple2\) but no batch sink"):
        await execute(Topology(from_yaml(DRIFT)), ints(I, I), call_model=Models(TFSIMPLE))


def test_run_state_is_pure_and_driven_by_the_caller() -> None:
    """The Kafka path feeds arrivals itself: firings come back in order, nothing runs by itself."""
    topology = Topology(load("join.yaml"))
    state = RunState(topology)
    [first, second] = state.offer(topology.pipeline.inputs_source, ints(I, I), now_ms=0)
    assert (first.node.name, second.node.name) == ("tfsimple1", "tfsimple2")
    outputs = (tensor("OUTPUT0", D, "INT32"), tensor("OUTPUT1", Z, "INT32"))
    assert state.offer(Source("join", "tfsimple1", Direction.OUTPUTS), outputs, now_ms=1) == []
    assert state.next_deadline() is None
    [third] = state.offer(Source("join", "tfsimple2", Direction.OUTPUTS), outputs, now_ms=2)
    assert third.node.name == "tfsimple3" and [t.name for t in third.message] == ["INPUT0", "INPUT1"]
    assert state.flush() == [] and state.runs == {"tfsimple1": 1, "tfsimple2": 1, "tfsimple3": 1}


def test_run_state_expires_outer_windows_at_their_deadline() -> None:
    topology = window_pipeline("outer", 50)
    state = RunState(topology)
    state.offer(topology.pipeline.inputs_source, (tensor("INPUT", [1.0]),), now_ms=0)
    assert state.offer(Source("windows", "add10", Direction.OUTPUTS), (tensor("OUTPUT", [11.0]),), 10) == []
    assert state.next_deadline() == 60
    assert state.expire(59) == []
    [fired] = state.expire(60)
    assert fired.node.name == "combine" and data(fired.message) == [("A", [11.0])]
    assert state.next_deadline() is None
