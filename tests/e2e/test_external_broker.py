"""Issue 11 must-show: pipelines against a separately started broker (``--kafka-bootstrap``), and
nothing lost across a restart of meshserve's own components.

The test starts its own Tansu on another free port; the stack runs no broker of its own. The
pipelines answer REST and gRPC through the real Envoy, and their messages are read from the external
broker's topics with aiokafka directly. Then the whole stack is stopped and started again on the
same home (its SQLite state) against the same broker: the pipelines are restored and serve, the
messages written before are still there (``pipeline inspect``'s reader, by request id), and a
request produced to a pipeline's input topic while meshserve was down is run once it is back (its
consumer group's offsets lived on the broker).
"""

from __future__ import annotations

from pathlib import Path

from apis.v2_dataplane import v2_dataplane_pb2 as pb
from tests.e2e.conftest import stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.pipeline_kafka import (
    CHAIN,
    ONE_STEP,
    STEPS,
    expected,
    newest,
    outputs_of,
    pipeline_topics,
    pipelines_stack,
    post,
    request_proto,
)
from tests.e2e.test_pipeline_engine import MODELS
from tests.kafka_broker import TansuBroker


async def test_pipelines_on_an_external_broker_survive_a_restart_of_meshserve(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    config = stack_config(
        tmp_path / "home", kafka=True, kafka_bootstrap=kafka_broker.bootstrap, artifact_roots=str(MODELS)
    )
    assert not config.kafka_embedded
    kafka = config.kafka_settings_for_stack()
    direct = KafkaIO(kafka_broker.bootstrap)
    async with pipelines_stack(config) as stack:
        assert not stack.supervisor.running("kafka")
        for name in STEPS:
            status, body = await post(stack, name, 7, f"before-{name}")
            assert status == 200 and [o["data"] for o in body["outputs"]] == expected(name, 7), body
        metadata = (("seldon-model", f"{CHAIN}.pipeline"), ("x-request-id", "before-grpc"))
        response = await stack.inference.ModelInfer(request_proto(9), metadata=metadata, timeout=30)
        assert [list(o.contents.int_contents) for o in response.outputs] == expected(CHAIN, 9)
        for name in STEPS:  # every message of the request, on the external broker
            for topic in pipeline_topics(kafka, name):
                message = await direct.read(topic, f"before-{name}".encode())
                assert message.headers["pipeline"] == name.encode(), topic
        out = await direct.read(kafka.topics.pipeline_outputs(CHAIN), b"before-grpc")
        assert outputs_of_value(out.value) == expected(CHAIN, 9)
        status, body = await post(stack, ONE_STEP, 11, "before-async", **{"seldon-async": "true"})
        assert status == 202, body
        out = await direct.read(kafka.topics.pipeline_outputs(ONE_STEP), b"before-async")
        assert outputs_of_value(out.value) == expected(ONE_STEP, 11)

    # meshserve is down; the broker is not. A request produced now waits on the input topic.
    await direct.produce(
        kafka.topics.pipeline_inputs(ONE_STEP), request_proto(13).SerializeToString(), key=b"while-down"
    )

    async with pipelines_stack(config) as stack:  # restored from the stack's state, same broker
        for name in STEPS:
            status, body = await post(stack, name, 21, f"after-{name}")
            assert status == 200 and [o["data"] for o in body["outputs"]] == expected(name, 21), body
        out = await direct.read(kafka.topics.pipeline_outputs(ONE_STEP), b"while-down")
        assert outputs_of_value(out.value) == expected(ONE_STEP, 13)
        for name in STEPS:  # the earlier messages are still there, as `pipeline inspect` reads them
            found = await newest(kafka, pipeline_topics(kafka, name), key=f"before-{name}".encode())
            assert all(found[t] for t in pipeline_topics(kafka, name)), {t: len(m) for t, m in found.items()}
            assert outputs_of(found[kafka.topics.pipeline_outputs(name)][0]) == expected(name, 7)
        # The async request from before the restart was not run again (its offset was committed).
        found = await newest(kafka, [kafka.topics.pipeline_outputs(ONE_STEP)], key=b"before-async")
        assert len(found[kafka.topics.pipeline_outputs(ONE_STEP)]) == 1


def outputs_of_value(value: bytes) -> list[list[int]]:
    return [list(t.contents.int_contents) for t in pb.ModelInferResponse.FromString(value).outputs]
