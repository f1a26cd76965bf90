"""An explainer on a pipeline (seldon-pipelines.md §13 scenario 35), through the real stack: Envoy,
MLServer, the agent, the dataflow engine and the Tansu broker.

``mul10-explainer`` (samples/models) is a black-box explainer with ``pipelineRef: explain-target``:
the agent writes its ``infer_uri`` (Envoy's ``/v2/pipelines/explain-target/infer``), and the
explainer's runtime calls that pipeline to explain it by occlusion. Pipeline ``explained`` runs it
as a step no output names: the caller gets add10's answer at once, the explanation lands on the
explainer's output topic afterwards, keyed by the request id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apis import manifests
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from tests.e2e.conftest import Stack, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.test_cli import cli
from tests.e2e.test_pipeline_engine import post, wait_ready

SAMPLES = Path(__file__).parents[2] / "samples"
X = [1.0, 2.0, 3.0, 4.0]
# mul10 multiplies each element by 10: zeroing x_i moves the output by 10 * x_i, and nothing else.
EXPLANATION = [10.0, 20.0, 30.0, 40.0]
INPUT = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [4], "data": X}]}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("explainer") / "home", kafka=True)
    async with running_stack(config) as stack:
        for name in ("add10", "mul10", "mul10-explainer"):
            [request] = manifests.read_model_requests(str(SAMPLES / "models" / f"{name}.yaml"))
            await stack.scheduler.LoadModel(request, timeout=10)
        for pipeline in manifests.read_pipeline_requests(str(SAMPLES / "pipelines" / "explainer.yaml")):
            await stack.scheduler.LoadPipeline(pipeline, timeout=10)
        for name in ("add10", "mul10", "mul10-explainer"):
            await stack.wait_state(name, "ModelAvailable", timeout=120)
        for name in ("explain-target", "explained"):
            await wait_ready(stack, name, timeout=120)
        yield stack


def floats(tensor: pb.ModelInferResponse.InferOutputTensor) -> list[float]:
    return list(tensor.contents.fp32_contents)


async def test_the_explainer_calls_its_pipeline_through_envoy(stack: Stack) -> None:
    status, body, _ = await post(stack, "/v2/models/mul10-explainer/infer", INPUT)
    assert status == 200, body
    assert [(o["name"], o["data"]) for o in body["outputs"]] == [("explanation", EXPLANATION)]
    # What it explains is the pipeline: it answered these calls (one plus one per element).
    status, body, _ = await post(stack, "/v2/pipelines/explain-target/infer", INPUT)
    assert status == 200 and body["outputs"][0]["data"] == [10.0, 20.0, 30.0, 40.0], body


async def test_an_explainer_step_answers_later_on_its_topic(stack: Stack) -> None:
    status, body, headers = await post(
        stack, "/v2/pipelines/explained/infer", INPUT, **{"x-request-id": "why-1"}
    )
    assert status == 200, body
    # The sync answer is the output step's alone: no explanation tensor in it.
    assert [(o["name"], o["data"]) for o in body["outputs"]] == [("OUTPUT", [11.0, 12.0, 13.0, 14.0])]
    assert headers["x-request-id"] == "why-1"
    kafka = KafkaIO(f"127.0.0.1:{stack.config.kafka_port}")
    message = await kafka.read("seldon.default.model.mul10-explainer.outputs", b"why-1")
    [explanation] = pb.ModelInferResponse.FromString(message.value).outputs
    assert (explanation.name, floats(explanation)) == ("explanation", EXPLANATION)
    # ... and inspect finds it by the request id, as the reference's scenario reads it.
    shown = await cli(
        stack, "pipeline", "inspect", "explained.mul10-explainer.outputs", "--request-id", "why-1",
        "--format", "json", "--kafka-bootstrap", kafka.bootstrap,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    [topic] = json.loads(shown.stdout)["topics"]
    assert topic["name"] == "seldon.default.model.mul10-explainer.outputs"
    [found] = topic["msgs"]
    assert found["key"] == "why-1"
    assert found["value"]["outputs"][0]["contents"] == {"fp32Contents": EXPLANATION}
