"""Topic and consumer-group prefixes, two namespaces on one Kafka (seldon-pipelines.md §13 scenario
28), with the real stack against a broker the test starts.

In the reference a namespace has its own control plane (a SeldonRuntime) and all share the Kafka
cluster; here a namespace is a stack. Two stacks, ``ns1`` and ``ns2``, both with ``topicPrefix`` and
``consumerGroupIdPrefix`` ``myorg``, each serving a pipeline ``tfsimples``: every topic and group
carries its namespace, and a request to one stack leaves nothing on the other's topics.
(The reference's pipeline gateway also reads outputs through a group of its own,
``myorg-<ns>-seldon-pipelinegateway-<uuid>``; meshserve's answers synchronous calls from the run
itself, decision 0020, so there is no such group.)
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import eventually, running_stack, stack_config
from tests.e2e.kafka_io import KafkaIO
from tests.e2e.test_pipeline_engine import (
    CHAIN_MAP,
    MODELS,
    D,
    addsub_input,
    model,
    pipeline,
    post,
    step,
    wait_ready,
)
from tests.kafka_broker import TansuBroker

NAMESPACES = ("ns1", "ns2")


async def groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await admin.start()
    try:
        return {group[0] for group in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def test_two_namespaces_share_one_kafka_under_their_own_names(
    kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    kafka = KafkaIO(kafka_broker.bootstrap)
    async with contextlib.AsyncExitStack() as stacks:
        running = {}
        for ns in NAMESPACES:
            file = tmp_path / f"kafka-{ns}.json"
            file.write_text(
                json.dumps(
                    {
                        "bootstrap.servers": kafka_broker.bootstrap,
                        "topicPrefix": "myorg",
                        "consumerGroupIdPrefix": "myorg",
                        "namespace": ns,
                    }
                )
            )
            config = stack_config(
                tmp_path / ns / "home", kafka=True, kafka_config=str(file), artifact_roots=str(MODELS)
            )
            assert not config.kafka_embedded
            stack = running[ns] = await stacks.enter_async_context(running_stack(config))
            for name in ("tfsimple1", "tfsimple2"):
                await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model(name, "addsub")))
            spec = pipeline(
                "tfsimples", [step("tfsimple1"), step("tfsimple2", ("tfsimple1",), CHAIN_MAP)], ["tfsimple2"]
            )
            await stack.scheduler.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=spec))
        for ns, stack in running.items():
            await wait_ready(stack, "tfsimples", timeout=120)
            status, body, _ = await post(
                stack, "/v2/pipelines/tfsimples/infer", addsub_input(), **{"x-request-id": f"id-{ns}"}
            )
            assert status == 200 and [o["data"] for o in body["outputs"]] == [D, D], body
        topics = await kafka.topics()
        for ns in NAMESPACES:
            other = next(n for n in NAMESPACES if n != ns)
            assert {
                f"myorg.{ns}.pipeline.tfsimples.inputs",
                f"myorg.{ns}.pipeline.tfsimples.outputs",
                f"myorg.{ns}.model.tfsimple1.inputs",
                f"myorg.{ns}.model.tfsimple2.outputs",
                f"myorg.{ns}.errors.errors",
            } <= topics, sorted(topics)
            # Each request is on its own namespace's topics, and only there.
            await kafka.read(f"myorg.{ns}.pipeline.tfsimples.outputs", f"id-{ns}".encode())
            await kafka.read(f"myorg.{ns}.model.tfsimple2.inputs", f"id-{ns}".encode())
            assert await kafka.absent(
                f"myorg.{other}.pipeline.tfsimples.outputs", f"id-{ns}".encode(), wait=1
            )
        assert not any(t.startswith("seldon.") for t in topics), sorted(topics)
        wanted = [f"myorg-{ns}-seldon-{c}-" for ns in NAMESPACES for c in ("modelgateway", "dataflow")]

        async def every_group_there() -> bool:
            names = await groups(kafka_broker.bootstrap)
            return all(any(g.startswith(w) for g in names) for w in wanted)

        await eventually(every_group_there, timeout=60, what=f"consumer groups {wanted}")
        assert all(g.startswith("myorg-") for g in await groups(kafka_broker.bootstrap))
