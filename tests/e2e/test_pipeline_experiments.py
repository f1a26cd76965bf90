"""Pipeline experiments (``resourceType: pipeline``, control-plane reference scenarios 36-39)
through the real Envoy, the dataflow engine / pipeline gateway, real MLServer models and the real
Tansu broker.

Pipelines ``pa`` (one step, model ``tfsimple1``) and ``pb`` (one step, ``tfsimple2``) compute the same
numbers, so a call tells which variant answered by its ``x-seldon-route``: the gateway names the
models that ran (``:tfsimple1_1:``) and Envoy appends the candidate pipeline (``:pa.pipeline:``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from tests.e2e.conftest import Stack, eventually, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.test_pipeline_engine import MODELS, D, I, Z, addsub_input, model, pipeline, step, wait_ready

PA = ":tfsimple1_1: :pa.pipeline:"
PB = ":tfsimple2_1: :pb.pipeline:"
CONCURRENCY = 8


@pytest.fixture(scope="module")
async def pstack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("pipeline-experiments") / "home"
    config = stack_config(home, kafka=True, artifact_roots=str(MODELS))
    async with running_stack(config) as stack:
        for name in ("tfsimple1", "tfsimple2"):
            await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model(name, "addsub")))
        for name in ("tfsimple1", "tfsimple2"):
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        for name, model_name in (("pa", "tfsimple1"), ("pb", "tfsimple2")):
            spec = pipeline(name, [step(model_name)], [model_name])
            await stack.scheduler.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=spec))
        for name in ("pa", "pb"):
            await wait_ready(stack, name)
        yield stack


def experiment(
    name: str,
    candidates: Iterable[tuple[str, int]],
    *,
    default: str | None = None,
    mirror: tuple[str, int] | None = None,
) -> scheduler_pb2.StartExperimentRequest:
    built = scheduler_pb2.Experiment(
        name=name,
        candidates=[scheduler_pb2.ExperimentCandidate(name=n, weight=w) for n, w in candidates],
        resourceType=scheduler_pb2.PIPELINE,
    )
    if default is not None:
        built.default = default
    if mirror is not None:
        built.mirror.name, built.mirror.percent = mirror
    return scheduler_pb2.StartExperimentRequest(experiment=built)


async def status(stack: Stack, name: str) -> scheduler_pb2.ExperimentStatusResponse:
    request = scheduler_pb2.ExperimentStatusRequest(subscriberName="tests", name=name)
    async for reply in stack.scheduler.ExperimentStatus(request, timeout=5):
        return reply
    raise AssertionError(f"no status for {name}")


async def start_active(stack: Stack, request: scheduler_pb2.StartExperimentRequest) -> None:
    await stack.scheduler.StartExperiment(request, timeout=5)

    async def active() -> bool:
        return (await status(stack, request.experiment.name)).active

    await eventually(active, timeout=60, what=f"experiment {request.experiment.name} active")


async def stop(stack: Stack, name: str) -> None:
    await stack.scheduler.StopExperiment(scheduler_pb2.StopExperimentRequest(name=name), timeout=5)


async def rest_call(stack: Stack, endpoint: str, path: str, sticky: str | None = None) -> str:
    """One REST pipeline inference; returns its whole ``x-seldon-route``."""
    headers = {"seldon-model": endpoint, **({"x-seldon-route": sticky} if sticky else {})}
    async with stack.http.post(f"{stack.url}{path}", json=addsub_input(), headers=headers) as response:
        body = await response.json(content_type=None)
        assert response.status == 200, body
        assert [o["data"] for o in body["outputs"]] == [D, Z]
        return " ".join(response.headers.getall("x-seldon-route"))


async def rest_routes(
    stack: Stack, endpoint: str, calls: int, path: str = "/v2/pipelines/pa/infer"
) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with gate:
            counts[await rest_call(stack, endpoint, path)] += 1

    await asyncio.gather(*(one() for _ in range(calls)))
    return counts


def grpc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="pa")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(I)
    return request


async def grpc_call(stack: Stack, endpoint: str, sticky: str | None = None) -> tuple[str, str]:
    """One gRPC pipeline inference: (Envoy's x-seldon-route, the gateway's model routes)."""
    metadata = [("seldon-model", endpoint), *([("x-seldon-route", sticky)] if sticky else [])]
    call = stack.inference.ModelInfer(grpc_request(), metadata=metadata, timeout=30)
    reply = await call
    assert [list(o.contents.int_contents) for o in reply.outputs] == [D, Z]
    envoy = dict(await call.initial_metadata() or ())["x-seldon-route"]
    gateway = dict(await call.trailing_metadata() or ())["x-seldon-route"]
    return str(envoy), str(gateway)


async def test_a_50_50_pipeline_experiment_splits_the_default_pipeline_and_stop_gives_it_back(
    pstack: Stack,
) -> None:
    """Scenario 36: the default pipeline's endpoint and <e>.experiment both split between pa and pb."""
    await start_active(pstack, experiment("pab", [("pa", 50), ("pb", 50)], default="pa"))
    try:
        reply = await status(pstack, "pab")
        assert (reply.active, reply.candidatesReady, reply.mirrorReady) == (True, True, True)
        # 200 calls: each side's share lies in (0.3, 0.7) except with probability < 1e-7.
        for endpoint, path in (
            ("pa.pipeline", "/v2/pipelines/pa/infer"),
            ("pab.experiment", "/v2/models/pab.experiment/infer"),
        ):
            counts = await rest_routes(pstack, endpoint, 200, path)
            assert set(counts) == {PA, PB}, counts
            assert 0.3 < counts[PA] / 200 < 0.7, counts
        # gRPC splits too (40 calls: both seen except with probability 2 * 2^-40).
        seen = {await grpc_call(pstack, "pa.pipeline") for _ in range(40)}
        assert seen == {(":pa.pipeline:", ":tfsimple1_1:"), (":pb.pipeline:", ":tfsimple2_1:")}
        # A candidate that is not the default keeps its own endpoint.
        assert set(await rest_routes(pstack, "pb.pipeline", 20, "/v2/pipelines/pb/infer")) == {PB}
    finally:
        await stop(pstack, "pab")

    async def pa_alone() -> bool:
        return set(await rest_routes(pstack, "pa.pipeline", 20)) == {PA}

    await eventually(pa_alone, what="pa serving alone after the stop")
    assert set(await rest_routes(pstack, "pa.pipeline", 100)) == {PA}
    with pytest.raises(grpc.aio.AioRpcError):
        await pstack.scheduler.ExperimentStatus(
            scheduler_pb2.ExperimentStatusRequest(subscriberName="tests", name="pab"), timeout=5
        ).read()


async def test_sticky_route_keeps_50_calls_on_one_pipeline_variant(pstack: Stack) -> None:
    """Scenario 37 over REST and gRPC: echoing x-seldon-route pins the candidate pipeline."""
    await start_active(pstack, experiment("sticky", [("pa", 50), ("pb", 50)], default="pa"))
    try:
        for _ in range(2):  # two fresh sessions: whichever variant the first call got
            first = await rest_call(pstack, "pa.pipeline", "/v2/pipelines/pa/infer")
            assert first in (PA, PB)
            pinned = {
                await rest_call(pstack, "pa.pipeline", "/v2/pipelines/pa/infer", sticky=first)
                for _ in range(50)
            }
            assert pinned == {first}
            envoy, gateway = await grpc_call(pstack, "pa.pipeline")
            sticky = f"{gateway} {envoy}"  # what the CLI echoes: every token of the answer
            assert {await grpc_call(pstack, "pa.pipeline", sticky) for _ in range(50)} == {(envoy, gateway)}
    finally:
        await stop(pstack, "sticky")


async def test_a_single_candidate_experiment_answers_from_its_candidate(pstack: Stack) -> None:
    """The reference built an empty split for one candidate; here it takes all the traffic."""
    await start_active(pstack, experiment("only-pb", [("pb", 1)]))
    try:
        counts = await rest_routes(pstack, "only-pb.experiment", 30, "/v2/models/only-pb.experiment/infer")
        assert set(counts) == {PB}, counts
        assert {await grpc_call(pstack, "only-pb.experiment") for _ in range(5)} == {
            (":pb.pipeline:", ":tfsimple2_1:")
        }
        assert set(await rest_routes(pstack, "pa.pipeline", 10)) == {PA}  # no default: pa untouched
    finally:
        await stop(pstack, "only-pb")


async def test_a_mirror_pipeline_runs_a_copy_and_its_answer_is_discarded(pstack: Stack) -> None:
    """Scenario 39: pa answers every call; pb runs a copy of it (its input topic has the request)."""
    await start_active(pstack, experiment("pmirror", [("pa", 100)], default="pa", mirror=("pb", 100)))
    kafka = KafkaIO(f"127.0.0.1:{pstack.config.kafka_port}")
    try:
        headers = {"seldon-model": "pa.pipeline", "x-request-id": "mirror-rest-1"}
        async with pstack.http.post(
            f"{pstack.url}/v2/pipelines/pa/infer", json=addsub_input(), headers=headers
        ) as response:
            assert response.status == 200
            assert " ".join(response.headers.getall("x-seldon-route")) == PA
        message = await kafka.read("seldon.default.pipeline.pb.inputs", b"mirror-rest-1")
        assert message.headers["pipeline"] == b"pb"
        # pb ran the copy (its output exists), not only received it.
        await kafka.read("seldon.default.pipeline.pb.outputs", b"mirror-rest-1")
        metadata = (("seldon-model", "pa.pipeline"), ("x-request-id", "mirror-grpc-1"))
        call = pstack.inference.ModelInfer(grpc_request(), metadata=metadata, timeout=30)
        await call
        assert dict(await call.initial_metadata() or ())["x-seldon-route"] == ":pa.pipeline:"
        await kafka.read("seldon.default.pipeline.pb.inputs", b"mirror-grpc-1")
        await kafka.read("seldon.default.pipeline.pb.outputs", b"mirror-grpc-1")
    finally:
        await stop(pstack, "pmirror")


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (experiment("kinds", [("pa", 1), ("tfsimple2", 1)]), "'tfsimple2' is a model, not a pipeline"),
        (experiment("bad-default", [("pa", 1), ("pb", 1)], default="pc"), "must be one of the candidates"),
        (experiment("mirror-model", [("pa", 1)], mirror=("tfsimple1", 5)), "is a model, not a pipeline"),
    ],
)
async def test_bad_pipeline_experiments_are_refused_and_change_nothing(
    pstack: Stack, request_: scheduler_pb2.StartExperimentRequest, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await pstack.scheduler.StartExperiment(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (caught.value.details() or "")
    assert set(await rest_routes(pstack, "pa.pipeline", 5)) == {PA}


def model_experiment(
    name: str, candidates: Iterable[tuple[str, int]], default: str
) -> scheduler_pb2.StartExperimentRequest:
    built = scheduler_pb2.Experiment(
        name=name,
        default=default,
        candidates=[scheduler_pb2.ExperimentCandidate(name=n, weight=w) for n, w in candidates],
    )
    return scheduler_pb2.StartExperimentRequest(experiment=built)


async def test_a_model_experiment_inside_a_pipeline_experiment_splits_the_step(pstack: Stack) -> None:
    """Control-plane scenario 38 (nested experiments): a model experiment on a step's model splits
    that step inside each pipeline variant, and a pipeline-sticky call pins only the pipeline."""
    await start_active(pstack, experiment("outer", [("pa", 50), ("pb", 50)], default="pa"))
    try:
        await start_active(
            pstack, model_experiment("inner", [("tfsimple1", 50), ("tfsimple2", 50)], "tfsimple1")
        )
        try:
            # 200 calls: pa's step reaches tfsimple1 (the inner default) and is split again, so pa
            # answers with either model; pb's step (tfsimple2) is not split. Each of the three
            # routes has probability 1/4 or 1/2 a call: all seen except with probability < 1e-20.
            counts = await rest_routes(pstack, "pa.pipeline", 200)
            assert set(counts) == {PA, ":tfsimple2_1: :pa.pipeline:", PB}, counts
            # Sticky on pa: the pipeline stays pa, its step is still split (the inner experiment is
            # not pinned by the pipeline's route): tfsimple2 inside pa within 50 calls (p < 1e-15).
            pinned = collections.Counter(
                [
                    await rest_call(pstack, "pa.pipeline", "/v2/pipelines/pa/infer", sticky=PA)
                    for _ in range(50)
                ]
            )
            assert set(pinned) == {PA, ":tfsimple2_1: :pa.pipeline:"}, pinned
        finally:
            await stop(pstack, "inner")
    finally:
        await stop(pstack, "outer")
