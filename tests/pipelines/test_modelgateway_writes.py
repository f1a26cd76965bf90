"""What the model gateway does when Kafka does not take a result, and what it reports reading."""

from __future__ import annotations

import json

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from apis.kafka import ERROR_HEADER, InferType, KafkaConfig
from pipelines.modelgateway.config import ModelGatewayConfig
from pipelines.modelgateway.consumers import NotWritten
from pipelines.modelgateway.envoy import Answer
from pipelines.modelgateway.gateway import ModelGateway

INPUTS = "seldon.default.model.iris.inputs"
OUTPUTS = "seldon.default.model.iris.outputs"
ERRORS = "seldon.default.errors.errors"
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode()


class FakeEnvoy:
    async def infer(self, model: str, call: object, headers: object) -> Answer:
        return Answer(b'{"outputs": []}', [], InferType.JSON_RESPONSE)


class FakeProducer:
    """Refuses writes to the topics in ``refuse`` with the given error; keeps the others."""

    def __init__(self, refuse: dict[str, Exception]) -> None:
        self.refuse = refuse
        self.sent: list[tuple[str, bytes]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send_and_wait(
        self, topic: str, value: bytes, *, headers: list[tuple[str, bytes]], **_: object
    ) -> None:
        if topic in self.refuse:
            raise self.refuse[topic]
        self.sent.append((topic, value))
        self.headers.append(headers)


def gateway_with(producer: FakeProducer | None) -> tuple[ModelGateway, CollectorRegistry]:
    registry = CollectorRegistry()
    gateway = ModelGateway(ModelGatewayConfig(), KafkaConfig(("k:1",)), FakeEnvoy(), registry)  # type: ignore[arg-type]
    gateway._producer = producer
    return gateway, registry


def record() -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(INPUTS, 0, 7, 0, 0, b"req-1", BODY, None, 1, len(BODY), [])


def count(registry: CollectorRegistry, outcome: str) -> float:
    value = registry.get_sample_value(
        "meshserve_modelgateway_messages_total", {"model": "iris", "outcome": outcome}
    )
    return value or 0.0


async def test_an_answer_kafka_did_not_take_raises_not_written_so_the_input_is_read_again() -> None:
    producer = FakeProducer({OUTPUTS: KafkaTimeoutError()})
    gateway, registry = gateway_with(producer)
    with pytest.raises(NotWritten):
        await gateway.handle(record())
    assert count(registry, "produce_failed") == 1 and count(registry, "ok") == 0
    with pytest.raises(NotWritten):  # no producer yet (Kafka not reached): also read again
        await gateway_with(None)[0].handle(record())


async def test_an_answer_too_large_for_kafka_goes_to_the_errors_topic_instead_of_looping() -> None:
    producer = FakeProducer({OUTPUTS: MessageSizeTooLargeError()})
    gateway, registry = gateway_with(producer)
    await gateway.handle(record())
    [(topic, value)] = producer.sent
    assert topic == ERRORS and b"too large for Kafka" in value
    assert count(registry, "answer_too_large") == 1
    assert (ERROR_HEADER, b"iris") in producer.headers[0]


async def test_a_written_answer_counts_ok() -> None:
    producer = FakeProducer({})
    gateway, registry = gateway_with(producer)
    await gateway.handle(record())
    assert producer.sent == [(OUTPUTS, b'{"outputs": []}')] and count(registry, "ok") == 1


def test_the_partitions_read_here_are_reported_by_model() -> None:
    gateway, registry = gateway_with(None)

    def owned(model: str) -> float | None:
        return registry.get_sample_value("meshserve_modelgateway_owned_partitions", {"model": model})

    other = "seldon.default.model.other.inputs"
    gateway._record_owned("g1", frozenset({TopicPartition(INPUTS, 0), TopicPartition(INPUTS, 1)}))
    gateway._record_owned("g2", frozenset({TopicPartition(other, 0), TopicPartition("unrelated", 0)}))
    assert (owned("iris"), owned("other")) == (2, 1)
    gateway._record_owned("g1", frozenset())  # revoked
    assert (owned("iris"), owned("other")) == (None, 1)
