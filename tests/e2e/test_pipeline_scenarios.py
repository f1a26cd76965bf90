"""The rest of seldon-pipelines.md §13 on the real stack (Envoy, the dataflow engine / pipeline
gateway, MLServer with the sample runtimes, the Tansu broker), REST and gRPC: metrics (36), requested
outputs (37), readiness over gRPC (20, 21), triggers with no trigger and ``inner`` (13, 14), the
revisit guard (31), gRPC variants of the sample cases (2, 7, 11, 15, 30), the version header (25),
the mirror's values (34), topic cleanup (27) and the outer join window (40).

Each test's docstring names its scenario; the sample pipelines and models are ``samples/``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apis import manifests
from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from tests.e2e.conftest import Stack, eventually, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.test_pipeline_engine import pipeline_state, post, wait_ready
from tests.e2e.test_pipeline_experiments import experiment, start_active, stop
from tests.e2e.test_sample_pipelines import FOUR, II, SAMPLES, D, I, Z, answer, tensor

MODELS = (
    "tfsimple1", "tfsimple2", "add10", "mul10", "conditional", "choice-is-one", "choice-is-two",
    "counter", "identity-loop", "identity-output",
)  # fmt: skip
SAMPLE_PIPELINES = (
    "tfsimple.yaml", "chain.yaml", "triggers.yaml", "tensor-inputs.yaml", "choice.yaml", "cycle.yaml",
    "add10-mul10.yaml",
)  # fmt: skip


def _pipeline(name: str, spec: str) -> str:
    return f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n{spec}"


def _branches(name: str, join: str) -> str:
    """Scenario 40's pipeline: only one of mul10/add10 answers; identity-output joins both."""
    return _pipeline(
        name,
        "  steps:\n"
        "  - name: conditional\n"
        "  - name: mul10\n"
        "    inputs: [conditional.outputs.OUTPUT0]\n"
        "    tensorMap: {conditional.outputs.OUTPUT0: INPUT}\n"
        "  - name: add10\n"
        "    inputs: [conditional.outputs.OUTPUT1]\n"
        "    tensorMap: {conditional.outputs.OUTPUT1: INPUT}\n"
        "  - name: identity-output\n"
        "    inputs: [mul10.outputs.OUTPUT, add10.outputs.OUTPUT]\n"
        f"    inputsJoinType: {join}\n"
        "    joinWindowMs: 500\n"
        "  output: {steps: [identity-output]}\n",
    )


OWN_PIPELINES = (
    # Scenario 14: mul10 needs both ok1 and ok2.
    _pipeline(
        "trigger-inner",
        "  steps:\n"
        "  - name: mul10\n"
        "    inputs: [trigger-inner.inputs.INPUT]\n"
        "    triggers: [trigger-inner.inputs.ok1, trigger-inner.inputs.ok2]\n"
        "    triggersJoinType: inner\n"
        "  - name: add10\n"
        "    inputs: [trigger-inner.inputs.INPUT]\n"
        "    triggers: [trigger-inner.inputs.ok3]\n"
        "  output: {steps: [mul10, add10], stepsJoin: any}\n",
    ),
    # Scenario 31: the counter needs 10 runs from 0; 5 revisits allow 6.
    _pipeline(
        "counter-five",
        "  allowCycles: true\n"
        "  maxStepRevisits: 5\n"
        "  steps:\n"
        "  - name: counter\n"
        "    inputsJoinType: any\n"
        "    inputs: [counter-five.inputs, identity-loop.outputs]\n"
        "  - name: identity-output\n"
        "    joinWindowMs: 1\n"
        "    inputs: [counter.outputs]\n"
        "    triggers: [counter.outputs.stop]\n"
        "  - name: identity-loop\n"
        "    joinWindowMs: 1\n"
        "    inputs: [counter.outputs.output]\n"
        "    triggers: [counter.outputs.continue]\n"
        "  output: {steps: [identity-output.outputs]}\n",
    ),
    _branches("outer-join", "outer"),
    _branches("inner-join", "inner"),
    _branches("any-join", "any"),
)


@pytest.fixture(scope="module")
async def sstack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("pipeline-scenarios") / "home", kafka=True)
    async with running_stack(config) as stack:
        for name in MODELS:
            [model] = manifests.read_model_requests(str(SAMPLES / "models" / f"{name}.yaml"))
            await stack.scheduler.LoadModel(model, timeout=10)
        for name in MODELS:
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        pipelines = [
            r
            for f in SAMPLE_PIPELINES
            for r in manifests.read_pipeline_requests(str(SAMPLES / "pipelines" / f))
        ]
        for text in OWN_PIPELINES:
            pipelines += manifests.parse_pipeline_requests(text, source="test")
        for pipeline in pipelines:
            await stack.scheduler.LoadPipeline(pipeline, timeout=10)
        for pipeline in pipelines:
            await wait_ready(stack, pipeline.pipeline.name, timeout=120)
        yield stack


# --- gRPC helpers (independent of the engine's codec: the test reads what a client reads) ---

_TYPED = {
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "BYTES": "bytes_contents",
}
_RAW = {"INT32": "<i4", "INT64": "<i8", "FP32": "<f4"}


def grpc_request(inputs: list[dict[str, Any]]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    for t in inputs:
        added = request.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        data = [str(v).encode() for v in t["data"]] if t["datatype"] == "BYTES" else t["data"]
        getattr(added.contents, _TYPED[t["datatype"]]).extend(data)
    return request


def grpc_answer(response: pb.ModelInferResponse) -> list[tuple[str, list[Any]]]:
    """(name, flat values) per output, from typed contents or ``raw_output_contents`` (the
    reference allows either, §6.3); BYTES as text."""
    found = []
    for index, out in enumerate(response.outputs):
        if not response.raw_output_contents:
            values = list(getattr(out.contents, _TYPED[out.datatype]))
            found.append((out.name, [v.decode() for v in values] if out.datatype == "BYTES" else values))
            continue
        raw = response.raw_output_contents[index]
        if out.datatype in _RAW:
            found.append((out.name, np.frombuffer(raw, dtype=_RAW[out.datatype]).tolist()))
            continue
        texts, at = [], 0
        while at < len(raw):  # BYTES: each element is a 4-byte little-endian length, then the bytes
            size = int.from_bytes(raw[at : at + 4], "little")
            texts.append(raw[at + 4 : at + 4 + size].decode())
            at += 4 + size
        found.append((out.name, texts))
    return found


async def grpc_infer(
    stack: Stack, endpoint: str, inputs: list[dict[str, Any]], **headers: str
) -> tuple[pb.ModelInferResponse, dict[str, str]]:
    metadata = (("seldon-model", endpoint), *headers.items())
    call = stack.inference.ModelInfer(grpc_request(inputs), metadata=metadata, timeout=30)
    response = await call
    trailers = {str(k): str(v) for k, v in (await call.trailing_metadata() or ())}
    return response, trailers


async def grpc_failure(stack: Stack, endpoint: str, inputs: list[dict[str, Any]]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stack.inference.ModelInfer(
            grpc_request(inputs), metadata=(("seldon-model", endpoint),), timeout=30
        )
    return raised.value


def trigger_input(*triggers: str) -> list[dict[str, Any]]:
    return [*(tensor(t, "INT32", [1], [1]) for t in triggers), tensor("INPUT", "FP32", [4], FOUR)]


def branch_input(choice: int) -> list[dict[str, Any]]:
    return [
        tensor("CHOICE", "INT32", [1], [choice]),
        tensor("INPUT0", "FP32", [4], FOUR),
        tensor("INPUT1", "FP32", [4], FOUR),
    ]


# --- 36: metrics ---


async def pipeline_samples(
    stack: Stack, family: str, port: int | None = None
) -> list[tuple[str, dict[str, str], float]]:
    """The samples of one metric family on the engine's ``/metrics`` (or that of ``port``)."""
    port = port or stack.config.engine_port
    async with stack.http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return [
        (s.name, s.labels, s.value)
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for s in metric.samples
    ]


async def test_pipeline_gateway_metrics_count_rest_and_grpc_calls_per_pipeline(sstack: Stack) -> None:
    """Scenario 36: 50 REST and 20 gRPC calls to tfsimples are counted with the reference's labels,
    and the latency histogram is kept per pipeline. Only this test calls tfsimples."""
    gate = asyncio.Semaphore(8)

    async def rest() -> None:
        async with gate:
            status, body, _ = await post(sstack, "/v2/pipelines/tfsimples/infer", {"inputs": II})
            assert status == 200 and answer(body) == [("OUTPUT0", D), ("OUTPUT1", D)], body

    async def over_grpc() -> None:
        async with gate:
            response, _ = await grpc_infer(sstack, "tfsimples.pipeline", II)
            assert grpc_answer(response) == [("OUTPUT0", D), ("OUTPUT1", D)]

    await asyncio.gather(*(rest() for _ in range(50)), *(over_grpc() for _ in range(20)))
    totals = {
        (labels["code"], labels["method_type"]): value
        for name, labels, value in await pipeline_samples(sstack, "seldon_pipeline_infer")
        if name == "seldon_pipeline_infer_total"
        and labels["pipeline"] == "tfsimples"
        and labels["server"] == "pipeline-gateway"
    }
    assert totals == {("200", "rest"): 50, ("OK", "grpc"): 20}, totals
    counts = {
        labels["method_type"]: value
        for name, labels, value in await pipeline_samples(sstack, "seldon_pipeline_infer_api_seconds")
        if name == "seldon_pipeline_infer_api_seconds_count" and labels.get("pipeline") == "tfsimples"
    }
    assert counts == {"rest": 50, "grpc": 20}, counts
    seconds = {
        labels["method_type"]: value
        for name, labels, value in await pipeline_samples(sstack, "seldon_pipeline_infer_seconds")
        if name == "seldon_pipeline_infer_seconds_total" and labels["pipeline"] == "tfsimples"
    }
    assert set(seconds) == {"rest", "grpc"} and all(v > 0 for v in seconds.values()), seconds


# --- 37: requested outputs ---


async def test_requested_outputs_are_ignored_by_pipelines_but_not_by_models(sstack: Stack) -> None:
    """Scenario 37: ``outputs: [OUTPUT0]`` to pipeline tfsimple gives both tensors; to model
    tfsimple1, only OUTPUT0 (REST and gRPC)."""
    body = {"inputs": II, "outputs": [{"name": "OUTPUT0"}]}
    status, out, _ = await post(sstack, "/v2/pipelines/tfsimple/infer", body)
    assert status == 200 and answer(out) == [("OUTPUT0", D), ("OUTPUT1", Z)], out
    status, out, _ = await post(sstack, "/v2/models/tfsimple1/infer", body)
    assert status == 200 and answer(out) == [("OUTPUT0", D)], out
    request = grpc_request(II)
    request.outputs.add(name="OUTPUT0")
    piped = await sstack.inference.ModelInfer(
        request, metadata=(("seldon-model", "tfsimple.pipeline"),), timeout=30
    )
    assert grpc_answer(piped) == [("OUTPUT0", D), ("OUTPUT1", Z)]
    direct = await sstack.inference.ModelInfer(request, metadata=(("seldon-model", "tfsimple1"),), timeout=30)
    assert grpc_answer(direct) == [("OUTPUT0", D)]


# --- 20, 21: readiness over gRPC ---


async def grpc_ready(stack: Stack, name: str) -> bool | grpc.StatusCode:
    """ModelReady through Envoy for ``<name>.pipeline``: its answer, or the error's code."""
    try:
        reply = await stack.inference.ModelReady(
            pb.ModelReadyRequest(name=name), metadata=(("seldon-model", f"{name}.pipeline"),), timeout=10
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return bool(reply.ready)


async def test_grpc_readiness_follows_the_step_models_and_the_pipeline_lifecycle(sstack: Stack) -> None:
    """Scenarios 20 and 21 over gRPC: not ready before its models exist, ready once both are, no
    route (UNIMPLEMENTED) once unloaded; reloaded while its models are ready: ready at once."""
    text = _pipeline(
        "rdy",
        "  steps:\n"
        "  - name: rdy1\n"
        "  - name: rdy2\n"
        "    inputs: [rdy1]\n"
        "    tensorMap: {rdy1.outputs.OUTPUT0: INPUT0, rdy1.outputs.OUTPUT1: INPUT1}\n"
        "  output: {steps: [rdy2]}\n",
    )
    [load] = manifests.parse_pipeline_requests(text, source="test")
    models = {}
    for name in ("rdy1", "rdy2"):
        [models[name]] = manifests.read_model_requests(str(SAMPLES / "models" / "tfsimple1.yaml"))
        models[name].model.meta.name = name
    assert await grpc_ready(sstack, "rdy") == grpc.StatusCode.UNIMPLEMENTED
    await sstack.scheduler.LoadPipeline(load, timeout=10)
    try:

        async def answers(wanted: bool | grpc.StatusCode) -> None:
            async def check() -> bool:
                return await grpc_ready(sstack, "rdy") == wanted

            await eventually(check, timeout=60, what=f"rdy's ModelReady to be {wanted}")

        await answers(False)
        state = await pipeline_state(sstack, "rdy")
        assert state is not None and not state.modelsReady, state
        await sstack.scheduler.LoadModel(models["rdy1"], timeout=10)
        await sstack.wait_state("rdy1", "ModelAvailable", timeout=60)
        assert await grpc_ready(sstack, "rdy") is False, "one step model of two is not enough"
        await sstack.scheduler.LoadModel(models["rdy2"], timeout=10)
        await answers(True)
        await sstack.scheduler.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name="rdy"), timeout=10)
        await answers(grpc.StatusCode.UNIMPLEMENTED)
        # Reloaded while its models are ready: ready as soon as it is loaded again.
        await sstack.scheduler.LoadPipeline(load, timeout=10)
        deadline = time.monotonic() + 60
        while (state := await pipeline_state(sstack, "rdy")) is None or state.status != state.PipelineReady:
            assert time.monotonic() < deadline, state
            await asyncio.sleep(0.05)
        assert state.modelsReady, state
        await answers(True)
        status, body, _ = await post(sstack, "/v2/pipelines/rdy/infer", {"inputs": II})
        assert status == 200 and answer(body) == [("OUTPUT0", D), ("OUTPUT1", D)], body
        # A step model unloaded: modelsReady goes (null in the CLI's JSON), ModelReady says false.
        reference = scheduler_pb2.ModelReference(name="rdy2")
        await sstack.scheduler.UnloadModel(scheduler_pb2.UnloadModelRequest(model=reference), timeout=10)
        await answers(False)
        state = await pipeline_state(sstack, "rdy")
        assert state is not None and not state.modelsReady, state
    finally:
        with contextlib.suppress(grpc.aio.AioRpcError):  # whatever is still loaded goes
            await sstack.scheduler.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name="rdy"), timeout=10)
        for name in ("rdy1", "rdy2"):
            reference = scheduler_pb2.ModelReference(name=name)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await sstack.scheduler.UnloadModel(
                    scheduler_pb2.UnloadModelRequest(model=reference), timeout=10
                )


# --- 13, 14, 31: requests that end without an answer ---


async def test_no_trigger_present_ends_at_once_with_a_clear_error(sstack: Stack) -> None:
    """Scenario 13: ``INPUT`` alone to trigger-joins runs neither branch: a prompt 500 naming the
    pipeline, not a wait for the deadline (gRPC INTERNAL); ``ok3`` runs add10 (gRPC)."""
    started = time.monotonic()
    status, body, _ = await post(sstack, "/v2/pipelines/trigger-joins/infer", {"inputs": trigger_input()})
    assert status == 500 and "trigger-joins" in body["error"] and "no output" in body["error"], body
    assert time.monotonic() - started < 20
    error = await grpc_failure(sstack, "trigger-joins.pipeline", trigger_input())
    assert error.code() == grpc.StatusCode.INTERNAL and "no output" in (error.details() or "")
    response, _ = await grpc_infer(sstack, "trigger-joins.pipeline", trigger_input("ok3"))
    assert grpc_answer(response) == [("OUTPUT", [11, 12, 13, 14])]


async def test_inner_trigger_join_needs_every_trigger(sstack: Stack) -> None:
    """Scenario 14: with ``triggersJoinType: inner``, ok1 alone does not run mul10; ok1 and ok2 do."""
    status, body, _ = await post(
        sstack,
        "/v2/pipelines/trigger-inner/infer",
        {"inputs": trigger_input("ok1")},
        **{"x-request-id": "inner-ok1"},
    )
    assert status == 500 and "no output" in body["error"], body
    kafka = KafkaIO(f"127.0.0.1:{sstack.config.kafka_port}")
    assert await kafka.absent("seldon.default.model.mul10.inputs", b"inner-ok1", wait=1)
    status, body, _ = await post(
        sstack, "/v2/pipelines/trigger-inner/infer", {"inputs": trigger_input("ok1", "ok2")}
    )
    assert status == 200 and answer(body) == [("OUTPUT", [10, 20, 30, 40])], body
    response, _ = await grpc_infer(sstack, "trigger-inner.pipeline", trigger_input("ok2", "ok1"))
    assert grpc_answer(response) == [("OUTPUT", [10, 20, 30, 40])]


async def test_a_loop_past_max_step_revisits_is_an_error_not_a_result(sstack: Stack) -> None:
    """Scenario 31: counting from 0 needs 10 counter runs; ``maxStepRevisits: 5`` ends the run with
    HTTP 508 / gRPC ABORTED naming the step; from 7 it needs only 4 and answers."""
    start = [tensor("counter-five.inputs", "INT32", [1], [0])]
    status, body, _ = await post(sstack, "/v2/pipelines/counter-five/infer", {"inputs": start})
    assert status == 508 and "counter" in body["error"] and "maxStepRevisits 5" in body["error"], body
    error = await grpc_failure(sstack, "counter-five.pipeline", start)
    assert error.code() == grpc.StatusCode.ABORTED and "maxStepRevisits" in (error.details() or "")
    near = [tensor("counter-five.inputs", "INT32", [1], [7])]
    status, body, _ = await post(sstack, "/v2/pipelines/counter-five/infer", {"inputs": near})
    assert status == 200 and answer(body) == [("output", [10]), ("stop", [""])], body


# --- 2, 7, 11, 15, 30 over gRPC ---


@pytest.mark.parametrize(
    ("scenario", "pipeline", "inputs", "expected"),
    [
        (2, "tfsimple", II, [("OUTPUT0", D), ("OUTPUT1", Z)]),
        (7, "tfsimples-input", II, [("OUTPUT0", I), ("OUTPUT1", I)]),
        (
            11,
            "pipeline-inputs",
            [tensor("INPUT0", "FP32", [4], FOUR), tensor("INPUT1", "FP32", [4], FOUR)],
            [("OUTPUT", [10, 20, 30, 40]), ("OUTPUT", [11, 12, 13, 14])],
        ),
        *[
            (
                15,
                "choice",
                [tensor("choice", "INT32", [1], [choice]), tensor("INPUT", "FP32", [4], [5, 6, 7, 8])],
                [("OUTPUT", out)],
            )
            for choice, out in ((1, [50, 60, 70, 80]), (2, [15, 16, 17, 18]))
        ],
        (
            30,
            "counter-pipeline",
            [tensor("counter-pipeline.inputs", "INT32", [1], [0])],
            [("output", [10]), ("stop", [""])],
        ),
    ],
)
async def test_sample_pipeline_answers_over_grpc(
    sstack: Stack,
    scenario: int,
    pipeline: str,
    inputs: list[dict[str, Any]],
    expected: list[tuple[str, list[Any]]],
) -> None:
    """Scenarios 2, 7, 11, 15 and 30 over gRPC: the reference's answer, with no model name/version."""
    response, trailers = await grpc_infer(sstack, f"{pipeline}.pipeline", inputs)
    assert (response.model_name, response.model_version) == ("", "")
    assert grpc_answer(response) == expected, scenario
    if pipeline == "counter-pipeline":
        assert [(o.datatype, list(o.shape)) for o in response.outputs] == [
            ("INT32", [1, 1]),
            ("BYTES", [1, 1]),
        ]
    assert trailers["x-pipeline-version"] == "1"


# --- 25, 34: values ---


async def test_the_version_header_is_the_status_pipeline_version(sstack: Stack) -> None:
    """Scenario 25: after a change, pipeline-add10 is version 2 in its status and in
    ``x-pipeline-version`` (REST header, gRPC trailer)."""
    text = _pipeline("versioned", "  steps:\n  - name: add10\n  output: {steps: [add10]}\n")
    [first] = manifests.parse_pipeline_requests(text, source="test")
    [second] = manifests.parse_pipeline_requests(
        text.replace("[add10]}", "[add10], joinWindowMs: 5}"), source="test"
    )
    await sstack.scheduler.LoadPipeline(first, timeout=10)
    try:
        await wait_ready(sstack, "versioned")
        await sstack.scheduler.LoadPipeline(second, timeout=10)

        async def second_ready() -> bool:
            state = await pipeline_state(sstack, "versioned")
            return state is not None and state.pipelineVersion == 2 and state.status == state.PipelineReady

        await eventually(second_ready, timeout=60, what="versioned v2 ready")
        state = await pipeline_state(sstack, "versioned")
        assert state is not None
        inputs = [tensor("INPUT", "FP32", [4], FOUR)]
        status, body, headers = await post(sstack, "/v2/pipelines/versioned/infer", {"inputs": inputs})
        assert status == 200 and answer(body) == [("OUTPUT", [11, 12, 13, 14])], body
        assert headers["x-pipeline-version"] == str(state.pipelineVersion) == "2"
        _, trailers = await grpc_infer(sstack, "versioned.pipeline", inputs)
        assert trailers["x-pipeline-version"] == "2"
    finally:
        await sstack.scheduler.UnloadPipeline(
            scheduler_pb2.UnloadPipelineRequest(name="versioned"), timeout=10
        )


async def test_a_mirrored_pipeline_computes_its_own_answer_on_its_topic(sstack: Stack) -> None:
    """Scenario 34: addmul10-mirror answers pipeline-add10's [11..14]; pipeline-mul10's output
    message for the same key decodes to [10..40], and mul10's infer counter goes up."""
    await start_active(
        sstack,
        experiment(
            "addmul10-mirror",
            [("pipeline-add10", 100)],
            default="pipeline-add10",
            mirror=("pipeline-mul10", 100),
        ),
    )

    async def mul10_calls() -> float:
        samples = await pipeline_samples(sstack, "seldon_model_infer", sstack.config.agent_metrics_port)
        return sum(v for n, labels, v in samples if n.endswith("_total") and labels["model"] == "mul10")

    try:
        before = await mul10_calls()
        inputs = [tensor("INPUT", "FP32", [4], FOUR)]
        status, body, _ = await post(
            sstack, "/v2/pipelines/pipeline-add10/infer", {"inputs": inputs}, **{"x-request-id": "mirror-34"}
        )
        assert status == 200 and answer(body) == [("OUTPUT", [11, 12, 13, 14])], body
        kafka = KafkaIO(f"127.0.0.1:{sstack.config.kafka_port}")
        message = await kafka.read("seldon.default.pipeline.pipeline-mul10.outputs", b"mirror-34")
        assert grpc_answer(pb.ModelInferResponse.FromString(message.value)) == [("OUTPUT", [10, 20, 30, 40])]
        model = await kafka.read("seldon.default.model.mul10.outputs", b"mirror-34")
        assert grpc_answer(pb.ModelInferResponse.FromString(model.value)) == [("OUTPUT", [10, 20, 30, 40])]

        async def counted() -> bool:  # the agent caches MLServer's counters for 1 s
            return await mul10_calls() >= before + 1

        await eventually(counted, timeout=10, what="mul10's infer counter to go up")
    finally:
        await stop(sstack, "addmul10-mirror")


# --- 27: topics ---


async def test_clean_topics_on_delete_removes_only_the_pipelines_topics(sstack: Stack) -> None:
    """Scenario 27: unloading a pipeline with ``dataflow.cleanTopicsOnDelete`` removes its two
    ``pipeline.<p>.*`` topics; the model topics, the errors topic and a flagless pipeline's stay."""
    steps = "  steps:\n  - name: tfsimple1\n  output: {steps: [tfsimple1]}\n"
    clean = _pipeline("tfsimple-clean", steps + "  dataflow: {cleanTopicsOnDelete: true}\n")
    kept = _pipeline("tfsimple-kept", steps)
    names = ("tfsimple-clean", "tfsimple-kept")
    for text in (clean, kept):
        [request] = manifests.parse_pipeline_requests(text, source="test")
        await sstack.scheduler.LoadPipeline(request, timeout=10)
    for name in names:
        await wait_ready(sstack, name)
        status, body, _ = await post(sstack, f"/v2/pipelines/{name}/infer", {"inputs": II})
        assert status == 200, body
    kafka = KafkaIO(f"127.0.0.1:{sstack.config.kafka_port}")
    own = {f"seldon.default.pipeline.{n}.{d}" for n in names for d in ("inputs", "outputs")}
    shared = {
        "seldon.default.model.tfsimple1.inputs",
        "seldon.default.model.tfsimple1.outputs",
        "seldon.default.errors.errors",
    }
    await kafka.wait_topics(*own, *shared)
    for name in names:
        await sstack.scheduler.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name=name), timeout=10)
    cleaned = {t for t in own if ".tfsimple-clean." in t}

    async def removed() -> bool:
        return not cleaned & await kafka.topics()

    await eventually(removed, timeout=60, what="tfsimple-clean's topics deleted")
    assert (own - cleaned) | shared <= await kafka.topics()


# --- 40: outer join window ---


async def test_an_outer_join_waits_its_window_then_joins_what_arrived(sstack: Stack) -> None:
    """Scenario 40: only mul10's branch emits; the outer join (joinWindowMs 500) fires after its
    window with mul10's tensor alone; ``any`` fires with it; ``inner`` never fires (no output)."""
    started = time.monotonic()
    status, body, _ = await post(sstack, "/v2/pipelines/outer-join/infer", {"inputs": branch_input(0)})
    elapsed = time.monotonic() - started
    assert status == 200 and answer(body) == [("OUTPUT", [10, 20, 30, 40])], body
    assert elapsed >= 0.5, elapsed
    response, _ = await grpc_infer(sstack, "outer-join.pipeline", branch_input(1))
    assert grpc_answer(response) == [("OUTPUT", [11, 12, 13, 14])]
    status, body, _ = await post(sstack, "/v2/pipelines/any-join/infer", {"inputs": branch_input(0)})
    assert status == 200 and answer(body) == [("OUTPUT", [10, 20, 30, 40])], body
    status, body, _ = await post(sstack, "/v2/pipelines/inner-join/infer", {"inputs": branch_input(0)})
    assert status == 500 and "no output" in body["error"], body
