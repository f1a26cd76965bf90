"""The sample pipelines (samples/pipelines) with the sample runtimes, through the real stack with
its dataflow engine and Kafka: each answers the reference's request with the reference's answer
(seldon-pipelines.md §13 scenarios 1, 4, 7-12, 15, 30), a batched asynchronous branch (32's
shape), and a call to ``tfsimple`` flows on into the
pipelines reading it (pipeline-to-pipeline, scenarios 16-19), under the caller's request id."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from apis import manifests
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.engine.codec import request_to_message, response_to_message
from tests.e2e.conftest import Stack, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.test_cli import cli
from tests.e2e.test_pipeline_engine import kafka_of, post, wait_ready

SAMPLES = Path(__file__).parents[2] / "samples"
MODELS = (
    "tfsimple1", "tfsimple2", "tfsimple3", "add10", "mul10", "conditional", "choice-is-one",
    "choice-is-two", "counter", "identity-loop", "identity-output", "drift",
)  # fmt: skip
PIPELINES = {
    "tfsimple.yaml": ["tfsimple"],
    "chain.yaml": ["tfsimples"],
    "join.yaml": ["join"],
    "conditional.yaml": ["tfsimple-conditional"],
    "choice.yaml": ["choice"],
    "triggers.yaml": ["trigger-joins"],
    "tensor-inputs.yaml": ["tfsimples-input", "pipeline-inputs"],
    "cycle.yaml": ["counter-pipeline"],
    "batch.yaml": ["tfsimple-drift"],
    "pipeline-to-pipeline.yaml": [
        "tfsimple-extended",
        "tfsimple-extended2",
        "tfsimple-combined",
        "tfsimple-combined-trigger",
        "tfsimple-extended-step",
        "tfsimple-combined-step",
    ],
}
I = list(range(1, 17))  # noqa: E741 - the reference's name
D = [2 * x for x in I]
Z = [0] * 16
Q = [4 * x for x in I]


def tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


II = [tensor("INPUT0", "INT32", [1, 16], I), tensor("INPUT1", "INT32", [1, 16], I)]
FOUR = [1, 2, 3, 4]


@pytest.fixture(scope="module")
async def kstack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("sample-pipelines") / "home", kafka=True)
    async with running_stack(config) as stack:
        for name in MODELS:
            [request] = manifests.read_model_requests(str(SAMPLES / "models" / f"{name}.yaml"))
            await stack.scheduler.LoadModel(request, timeout=10)
        for name in MODELS:
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        for file in PIPELINES:
            for pipeline in manifests.read_pipeline_requests(str(SAMPLES / "pipelines" / file)):
                await stack.scheduler.LoadPipeline(pipeline, timeout=10)
        for names in PIPELINES.values():
            for name in names:
                await wait_ready(stack, name, timeout=120)
        yield stack


def answer(body: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    return [(out["name"], out["data"]) for out in body["outputs"]]


@pytest.mark.parametrize(
    ("pipeline", "inputs", "expected"),
    [
        ("tfsimple", II, [("OUTPUT0", D), ("OUTPUT1", Z)]),
        ("tfsimples", II, [("OUTPUT0", D), ("OUTPUT1", D)]),
        ("join", II, [("OUTPUT0", D), ("OUTPUT1", D)]),
        ("tfsimples-input", II, [("OUTPUT0", I), ("OUTPUT1", I)]),
        *[
            (
                "tfsimple-conditional",
                [
                    tensor("CHOICE", "INT32", [1], [choice]),
                    tensor("INPUT0", "FP32", [4], FOUR),
                    tensor("INPUT1", "FP32", [4], FOUR),
                ],
                [("OUTPUT", out)],
            )
            for choice, out in ((0, [10, 20, 30, 40]), (1, [11, 12, 13, 14]))
        ],
        *[
            (
                "choice",
                [tensor("choice", "INT32", [1], [choice]), tensor("INPUT", "FP32", [4], [5, 6, 7, 8])],
                [("OUTPUT", out)],
            )
            for choice, out in ((1, [50, 60, 70, 80]), (2, [15, 16, 17, 18]))
        ],
        *[
            (
                "trigger-joins",
                [tensor(trigger, "INT32", [1], [1]), tensor("INPUT", "FP32", [4], FOUR)],
                [("OUTPUT", out)],
            )
            for trigger, out in (
                ("ok1", [10, 20, 30, 40]),
                ("ok2", [10, 20, 30, 40]),
                ("ok3", [11, 12, 13, 14]),
            )
        ],
        (
            "pipeline-inputs",
            [tensor("INPUT0", "FP32", [4], FOUR), tensor("INPUT1", "FP32", [4], FOUR)],
            [("OUTPUT", [10, 20, 30, 40]), ("OUTPUT", [11, 12, 13, 14])],
        ),
        (
            "counter-pipeline",
            [tensor("counter-pipeline.inputs", "INT32", [1], [0])],
            [("output", [10]), ("stop", [""])],
        ),
        (
            "counter-pipeline",
            [tensor("counter-pipeline.inputs", "INT32", [1], [15])],
            [("output", [16]), ("stop", [""])],
        ),
    ],
)
async def test_sample_pipeline_answers_as_the_reference(
    kstack: Stack, pipeline: str, inputs: list[dict[str, Any]], expected: list[tuple[str, list[Any]]]
) -> None:
    status, body, _ = await post(kstack, f"/v2/pipelines/{pipeline}/infer", {"inputs": inputs})
    assert status == 200, body
    assert body["model_name"] == "" and answer(body) == expected, body


async def test_the_counter_pipeline_answers_the_reference_body(kstack: Stack) -> None:
    status, body, _ = await post(
        kstack,
        "/v2/models/anything/infer",
        {"inputs": [tensor("counter-pipeline.inputs", "INT32", [1], [0])]},
        **{"seldon-model": "counter-pipeline.pipeline"},
    )
    assert status == 200, body
    assert body["outputs"] == [
        {
            "data": [10],
            "name": "output",
            "shape": [1, 1],
            "datatype": "INT32",
            "parameters": {"content_type": "np"},
        },
        {
            "data": [""],
            "name": "stop",
            "shape": [1, 1],
            "datatype": "BYTES",
            "parameters": {"content_type": "str"},
        },
    ]


async def test_a_step_refusing_the_data_is_a_400_naming_it(kstack: Stack) -> None:
    bad = [tensor("INPUT0", "INT32", [1, 8], I[:8]), tensor("INPUT1", "INT32", [1, 8], I[:8])]
    status, body, _ = await post(kstack, "/v2/pipelines/tfsimples/infer", {"inputs": bad})
    assert status == 400, body
    assert "must be INT32 [1..8,16]" in str(body), body


async def topic_tensors(kafka: KafkaIO, topic: str, key: str) -> list[tuple[str, list[Any]]]:
    """The tensors of the message keyed ``key`` on ``topic`` (a request on inputs, a response on outputs)."""
    value = (await kafka.read(topic, key.encode())).value
    if topic.endswith(".inputs"):
        message = request_to_message(pb.ModelInferRequest.FromString(value))
    else:
        message = response_to_message(pb.ModelInferResponse.FromString(value))
    return [(t.name, list(t.data)) for t in message]


@pytest.mark.parametrize("request_id", ["test-id", "test-id-grpc"])
async def test_a_call_to_tfsimple_flows_into_the_pipelines_reading_it(kstack: Stack, request_id: str) -> None:
    """Scenarios 16-19: only tfsimple answers the caller; every pipeline reading its outputs (or its
    step's) runs on the same data under the same key, and their outputs land on their topics."""
    if request_id.endswith("grpc"):
        request = pb.ModelInferRequest()
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="INT32", shape=[1, 16]).contents.int_contents.extend(I)
        metadata = (("seldon-model", "tfsimple.pipeline"), ("x-request-id", request_id))
        response = await kstack.inference.ModelInfer(request, metadata=metadata, timeout=30)
        assert [(o.name, list(o.contents.int_contents)) for o in response.outputs] == [
            ("OUTPUT0", D),
            ("OUTPUT1", Z),
        ]
    else:
        status, body, headers = await post(
            kstack, "/v2/pipelines/tfsimple/infer", {"inputs": II}, **{"x-request-id": request_id}
        )
        assert status == 200, body
        assert answer(body) == [("OUTPUT0", D), ("OUTPUT1", Z)] and headers["x-request-id"] == request_id
    kafka = kafka_of(kstack)
    topic = "seldon.default.pipeline.{}.{}".format
    expected = {
        # 16: tfsimple's outputs, renamed, are tfsimple-extended's inputs; tfsimple2 adds and subtracts.
        topic("tfsimple-extended", "inputs"): [("INPUT0", D), ("INPUT1", Z)],
        topic("tfsimple-extended", "outputs"): [("OUTPUT0", D), ("OUTPUT1", D)],
        topic("tfsimple-extended2", "outputs"): [("OUTPUT0", D), ("OUTPUT1", D)],
        # 17: OUTPUT0 of one downstream pipeline joined with OUTPUT1 of the other.
        topic("tfsimple-combined", "inputs"): [("INPUT0", D), ("INPUT1", D)],
        topic("tfsimple-combined", "outputs"): [("OUTPUT0", Q), ("OUTPUT1", Z)],
        # 18: extended2's outputs only trigger; none of its tensors is passed on.
        topic("tfsimple-combined-trigger", "inputs"): [("INPUT0", D), ("INPUT1", D)],
        topic("tfsimple-combined-trigger", "outputs"): [("OUTPUT0", Q), ("OUTPUT1", Z)],
        # 19: a step of another pipeline (tfsimple1's outputs inside tfsimple), and its variant.
        topic("tfsimple-extended-step", "outputs"): [("OUTPUT0", D), ("OUTPUT1", D)],
        topic("tfsimple-combined-step", "outputs"): [("OUTPUT0", Q), ("OUTPUT1", Z)],
    }
    for name, tensors in expected.items():
        assert await topic_tensors(kafka, name, request_id) == tensors, name
    # The downstream runs called their step model with the same key, each naming its own pipeline.
    step = await kafka.read("seldon.default.model.tfsimple2.inputs", request_id.encode())
    assert step.headers["pipeline"] != b"tfsimple", step.headers
    assert await kafka.absent("seldon.default.errors.errors", request_id.encode(), wait=1)


async def test_a_batched_step_gets_three_requests_in_one_call_and_holds_up_none(kstack: Stack) -> None:
    """Scenario 32's shape with batch.size 3: each request is answered by tfsimple1 alone (no
    is_drift) while drift waits; the third request completes the batch, and drift's one call on the
    stacked [3,16] inputs lands on its model topics under that request's id."""
    ids = ["drift-1", "drift-2", "drift-3"]
    for request_id in ids:
        status, body, _ = await post(
            kstack, "/v2/pipelines/tfsimple-drift/infer", {"inputs": II}, **{"x-request-id": request_id}
        )
        assert status == 200 and answer(body) == [("OUTPUT0", D), ("OUTPUT1", Z)], body
    kafka = kafka_of(kstack)
    assert await topic_tensors(kafka, "seldon.default.model.drift.inputs", "drift-3") == [
        ("INPUT0", I * 3),
        ("INPUT1", I * 3),
    ]
    stacked = pb.ModelInferRequest.FromString(
        (await kafka.read("seldon.default.model.drift.inputs", b"drift-3")).value
    )
    assert [list(t.shape) for t in stacked.inputs] == [[3, 16], [3, 16]]
    assert await topic_tensors(kafka, "seldon.default.model.drift.outputs", "drift-3") == [("is_drift", [0])]
    for request_id in ids[:2]:  # one call for the three: nothing under the first two ids
        assert await kafka.absent("seldon.default.model.drift.outputs", request_id.encode(), wait=1)
    bootstrap = f"127.0.0.1:{kstack.config.kafka_port}"
    shown = await cli(
        kstack, "pipeline", "inspect", "tfsimple-drift.drift.outputs.is_drift", "--request-id", "drift-3",
        "--format", "json", "--kafka-bootstrap", bootstrap,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    [topic] = json.loads(shown.stdout)["topics"]
    assert topic["name"] == "seldon.default.model.drift.outputs"
    [message] = topic["msgs"]
    assert message["key"] == "drift-3" and message["value"]["name"] == "is_drift", message
    assert message["value"]["datatype"] == "INT64" and message["value"]["shape"] in (["1", "1"], [1, 1])


async def inspect_json(stack: Stack, *args: str) -> list[dict[str, Any]]:
    bootstrap = f"127.0.0.1:{stack.config.kafka_port}"
    shown = await cli(stack, "pipeline", "inspect", *args, "--format", "json", "--kafka-bootstrap", bootstrap)
    assert shown.returncode == 0, shown.stderr
    topics: list[dict[str, Any]] = json.loads(shown.stdout)["topics"]
    return topics


def shown_request_ids(stderr: str) -> list[str]:
    """The x-request-id values ``--show-headers`` printed (REST headers, gRPC metadata; any case)."""
    pairs = (line.strip().split(":", 1) for line in stderr.splitlines() if ":" in line)
    return [value.strip() for key, value in pairs if key.lower() == "x-request-id"]


def values(topic: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    [message] = topic["msgs"]
    body = message["value"]
    tensors = body.get("inputs") or body.get("outputs")
    return [(t["name"], [int(v) for v in t["contents"]["intContents"]]) for t in tensors]


@pytest.mark.parametrize("mode", ["rest", "grpc"])
async def test_cli_pipeline_infer_then_inspect_by_request_id(kstack: Stack, mode: str) -> None:
    """Scenarios 22, 5 and 23 with the CLI: ``pipeline infer`` answers D, D and shows the request id
    it was given (``--show-headers``); ``pipeline inspect tfsimples --request-id`` then finds every
    step's input and output and the pipeline's own messages under that id, in the reference's
    order. Without an id the call still gets one (Envoy's, decision 0020) and inspect finds it."""
    body = json.dumps({"inputs": II})
    given = f"cli-{mode}-id"
    infer = await cli(
        kstack, "pipeline", "infer", "tfsimples", "--inference-mode", mode, "--show-headers",
        "--header", f"x-request-id={given}", body,
    )  # fmt: skip
    assert infer.returncode == 0, infer.stderr
    answered = json.loads(infer.stdout)
    tensors = answered.get("outputs")
    assert [t["name"] for t in tensors] == ["OUTPUT0", "OUTPUT1"], answered
    if mode == "rest":
        assert answered["model_name"] == "" and [t["data"] for t in tensors] == [D, D], answered
    else:
        assert [[int(v) for v in t["contents"]["intContents"]] for t in tensors] == [D, D], answered
    assert set(shown_request_ids(infer.stderr)) == {given}, infer.stderr  # gRPC: headers and trailers
    topics = await inspect_json(kstack, "tfsimples", "--request-id", given, "--offset", "10")
    assert [t["name"] for t in topics] == [
        "seldon.default.model.tfsimple1.inputs",
        "seldon.default.model.tfsimple1.outputs",
        "seldon.default.model.tfsimple2.inputs",
        "seldon.default.model.tfsimple2.outputs",
        "seldon.default.pipeline.tfsimples.inputs",
        "seldon.default.pipeline.tfsimples.outputs",
    ]
    assert all(message["key"] == given for t in topics for message in t["msgs"]), topics
    assert [values(t) for t in topics] == [
        [("INPUT0", I), ("INPUT1", I)],
        [("OUTPUT0", D), ("OUTPUT1", Z)],
        [("INPUT0", D), ("INPUT1", Z)],
        [("OUTPUT0", D), ("OUTPUT1", D)],
        [("INPUT0", I), ("INPUT1", I)],
        [("OUTPUT0", D), ("OUTPUT1", D)],
    ]
    # No id given: the answer carries the one the request got, and it keys the request's messages.
    anonymous = await cli(
        kstack, "pipeline", "infer", "tfsimples", "--inference-mode", mode, "--show-headers", body
    )
    assert anonymous.returncode == 0, anonymous.stderr
    [generated] = set(shown_request_ids(anonymous.stderr))
    assert generated and generated != given
    [output] = await inspect_json(kstack, "tfsimples.outputs", "--request-id", generated, "--offset", "10")
    assert values(output) == [("OUTPUT0", D), ("OUTPUT1", D)] and output["msgs"][0]["key"] == generated


async def test_the_gateway_itself_gives_a_request_without_an_id_an_xid(kstack: Stack) -> None:
    """Scenario 23's XID (20 lowercase base32hex characters) is the gateway's own id: through Envoy a
    caller without x-request-id gets Envoy's UUID first (decision 0020), so call the gateway."""
    url = f"http://127.0.0.1:{kstack.config.pipeline_http_port}/v2/pipelines/tfsimples/infer"
    async with kstack.http.post(url, json={"inputs": II}) as response:
        assert response.status == 200, await response.text()
        xid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-v]{20}", xid), xid
    [output] = await inspect_json(kstack, "tfsimples.outputs", "--request-id", xid, "--offset", "10")
    assert values(output) == [("OUTPUT0", D), ("OUTPUT1", D)]
