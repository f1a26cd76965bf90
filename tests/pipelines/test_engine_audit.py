"""The engine's audit writer: records encoded on its task, sent in bursts, nothing dropped silently."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from prometheus_client import CollectorRegistry

from apis.kafka import INFER_TYPE_HEADER, InferType
from apis.kafka_topics import Topics
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.engine import audit
from pipelines.engine.audit import TopicWriter
from pipelines.engine.codec import message_to_request, message_to_response
from pipelines.references import Direction, Source
from pipelines.tensors import Tensor

INPUT = (Tensor("INPUT0", "INT32", (1, 2), [1, 2]),)
OUTPUT = (Tensor("OUTPUT0", "INT32", (1, 2), [3, 4]),)


class RecordingBatch:
    """aiokafka's BatchBuilder as the writer uses it: takes records until ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        self.capacity = capacity

    def append(self, *, timestamp: None, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
        if len(self.records) >= self.capacity:
            return None
        self.records.append((key, value, headers))
        return object()


class RecordingProducer:
    """Takes batches as aiokafka does (a delivery future back); notes whether the loop ran between."""

    def __init__(self, partitions: int = 1, capacity: int = 100, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]] = []
        self.batches: list[tuple[str, int, int]] = []  # topic, partition, records
        self.ticks_at_send: list[int] = []
        self.ticks = 0
        self.partitions = partitions
        self.capacity = capacity
        self.fail = fail

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> RecordingBatch:
        return RecordingBatch(self.capacity)

    async def send_batch(self, batch: RecordingBatch, topic: str, *, partition: int) -> Any:
        if self.fail is not None and self.batches:  # the first batch goes, later ones fail
            raise self.fail
        self.batches.append((topic, partition, len(batch.records)))
        for key, value, headers in batch.records:
            self.sent.append((topic, key, value, headers))
            self.ticks_at_send.append(self.ticks)
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


async def _ticker(producer: RecordingProducer) -> None:
    while True:
        producer.ticks += 1
        await asyncio.sleep(0)


async def _until(condition: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


def _count(writer: TopicWriter, outcome: str) -> float:
    return writer.records.labels(outcome)._value.get()  # type: ignore[no-any-return]


async def test_a_runs_records_are_encoded_by_the_writer_and_leave_in_one_burst() -> None:
    writer = TopicWriter(Topics("seldon", "default"), "engine-0", CollectorRegistry())
    producer = RecordingProducer()
    observer = writer.observer("p", "req-1", {"x-request-id": "req-1"})
    observer.record(Source("p", None, Direction.INPUTS), INPUT)
    observer.record(Source("p", "m", Direction.INPUTS), INPUT)
    observer.record(Source("p", "m", Direction.OUTPUTS), OUTPUT)
    observer.record(Source("p", None, Direction.OUTPUTS), OUTPUT)
    ticker = asyncio.create_task(_ticker(producer))
    task = asyncio.create_task(writer.run(producer))
    try:
        await _until(lambda: len(producer.sent) == 4 and _count(writer, "written") == 4)
    finally:
        for running in (task, ticker):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert len(set(producer.ticks_at_send)) == 1  # handed over without the loop running in between
    topics = [sent[0] for sent in producer.sent]
    assert topics == [
        "seldon.default.pipeline.p.inputs",
        "seldon.default.model.m.inputs",
        "seldon.default.model.m.outputs",
        "seldon.default.pipeline.p.outputs",
    ]
    assert {sent[1] for sent in producer.sent} == {b"req-1"}
    request = pb.ModelInferRequest.FromString(producer.sent[1][2])
    assert request.id == "req-1" and list(request.inputs[0].contents.int_contents) == [1, 2]
    response = pb.ModelInferResponse.FromString(producer.sent[2][2])
    assert response.model_name == "m" and list(response.outputs[0].contents.int_contents) == [3, 4]
    kinds = [dict(sent[3])[INFER_TYPE_HEADER] for sent in producer.sent]
    request_kind, response_kind = (
        str(k).encode() for k in (InferType.PROTO_REQUEST, InferType.PROTO_RESPONSE)
    )
    assert kinds == [request_kind, request_kind, response_kind, response_kind]
    assert all(dict(sent[3])["meshserve-audit"] == b"engine-0" for sent in producer.sent)


async def test_copies_wait_for_the_gathering_and_an_answer_ends_it_taking_them_along(
    monkeypatch: Any,
) -> None:
    # A run fed from Kafka is answered on its pipeline's outputs topic: that record must not wait
    # the gathering meant for copies (it cost the Kafka-driven path 50 ms a request).
    monkeypatch.setattr(audit, "GATHER_SECONDS", 30.0)
    writer = TopicWriter(Topics("seldon", "default"), "engine-0", CollectorRegistry())
    producer = RecordingProducer()
    task = asyncio.create_task(writer.run(producer))
    try:
        synchronous = writer.observer("p", "sync", {})  # answered over HTTP/gRPC: all copies
        synchronous.record(Source("p", None, Direction.OUTPUTS), OUTPUT)
        fed = writer.observer("p", "async", {}, inputs_written=True, answers_on_topic=True)
        fed.record(Source("p", "m", Direction.OUTPUTS), OUTPUT)  # a step's output: a copy
        await asyncio.sleep(0.05)
        assert producer.sent == []  # still gathering
        fed.record(Source("p", None, Direction.OUTPUTS), OUTPUT)  # the async caller's answer
        await _until(lambda: len(producer.sent) == 3, seconds=5)
        # An error record is an answer too, whichever path the run came by.
        writer.error("p", "m", "step m failed", "sync-2", {})
        await _until(lambda: len(producer.sent) == 4, seconds=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # One burst, one batch per topic partition (each partition keeps its order), then the error.
    burst = producer.sent[:3]
    assert [sent[1] for sent in burst if sent[0] == "seldon.default.pipeline.p.outputs"] == [
        b"sync",
        b"async",
    ]
    assert [sent[1] for sent in burst if sent[0] == "seldon.default.model.m.outputs"] == [b"async"]
    assert (producer.sent[3][0], producer.sent[3][1]) == ("seldon.default.errors.errors", b"sync-2")


async def test_unencodable_and_overflowing_records_are_counted_not_lost_silently(monkeypatch: Any) -> None:
    monkeypatch.setattr(audit, "MAX_QUEUED", 2)
    writer = TopicWriter(Topics("seldon", "default"), "engine-0", CollectorRegistry())
    observer = writer.observer("p", "req-2", {})
    wrong = (Tensor("OUTPUT0", "INT32", (1, 3), [1, 2]),)  # three elements declared, two given
    observer.record(Source("p", "m", Direction.OUTPUTS), wrong)
    observer.record(Source("p", "m", Direction.INPUTS), INPUT)
    observer.record(Source("p", None, Direction.OUTPUTS), OUTPUT)  # the queue holds two: dropped
    assert _count(writer, "dropped") == 1
    producer = RecordingProducer()
    task = asyncio.create_task(writer.run(producer))
    try:
        await _until(lambda: _count(writer, "written") == 1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert _count(writer, "unencodable") == 1
    assert [sent[0] for sent in producer.sent] == ["seldon.default.model.m.inputs"]


def _writer_with(records: int, *, key: str = "req") -> TopicWriter:
    writer = TopicWriter(Topics("seldon", "default"), "engine-0", CollectorRegistry())
    for index in range(records):
        observer = writer.observer("p", f"{key}-{index}", {})
        observer.record(Source("p", "m", Direction.INPUTS), INPUT)
    return writer


async def _run_until(writer: TopicWriter, producer: RecordingProducer, condition: Any) -> None:
    task = asyncio.create_task(writer.run(producer))
    try:
        await _until(condition)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_burst_leaves_as_one_batch_per_partition_each_key_on_the_partition_send_would_choose() -> (
    None
):
    from aiokafka.partitioner import DefaultPartitioner

    writer = _writer_with(12)
    producer = RecordingProducer(partitions=3)
    await _run_until(writer, producer, lambda: _count(writer, "written") == 12)
    assert sum(count for _, _, count in producer.batches) == 12
    assert len({(topic, partition) for topic, partition, _ in producer.batches}) == len(producer.batches)
    position = 0
    for topic, partition, count in producer.batches:
        for sent in producer.sent[position : position + count]:
            assert sent[0] == topic == "seldon.default.model.m.inputs"
            assert DefaultPartitioner()(sent[1], [0, 1, 2], [0, 1, 2]) == partition
        position += count


async def test_a_full_batch_is_submitted_and_the_partition_keeps_its_order() -> None:
    writer = _writer_with(5)
    producer = RecordingProducer(capacity=2)
    await _run_until(writer, producer, lambda: _count(writer, "written") == 5)
    assert [count for _, _, count in producer.batches] == [2, 2, 1]
    assert [sent[1] for sent in producer.sent] == [f"req-{i}".encode() for i in range(5)]


async def test_a_batch_kafka_refuses_is_counted_failed_and_the_writer_goes_on() -> None:
    from aiokafka.errors import KafkaError

    writer = _writer_with(5)
    producer = RecordingProducer(capacity=2, fail=KafkaError("broker gone"))
    await _run_until(writer, producer, lambda: _count(writer, "failed") == 3)
    assert _count(writer, "written") == 2
    producer.fail = None
    writer.observer("p", "later", {}).record(Source("p", "m", Direction.INPUTS), INPUT)
    await _run_until(writer, producer, lambda: _count(writer, "written") == 3)


def test_tensors_written_twice_in_a_burst_are_encoded_once_with_the_bytes_of_a_full_encoding() -> None:
    key = b"req-1"
    step = audit.Record("t", key, [], message=OUTPUT, source=Source("p", "m", Direction.OUTPUTS))
    pipeline = audit.Record("t", key, [], message=OUTPUT, source=Source("p", None, Direction.OUTPUTS))
    step_in = audit.Record("t", key, [], message=INPUT, source=Source("p", "m", Direction.INPUTS))
    pipeline_in = audit.Record("t", key, [], message=INPUT, source=Source("p", None, Direction.INPUTS))
    done: dict[tuple[object, ...], bytes] = {}
    encoded = [r.encoded(done) for r in (step, pipeline, step_in, pipeline_in)]
    assert len(done) == 2  # one encoding of the outputs, one of the inputs
    full = [
        message_to_response(OUTPUT, request_id="req-1", model="m"),
        message_to_response(OUTPUT, request_id="req-1"),
        message_to_request(INPUT, request_id="req-1"),
        message_to_request(INPUT, request_id="req-1"),
    ]
    assert encoded == [m.SerializeToString() for m in full]
    assert pb.ModelInferResponse.FromString(encoded[0]).model_name == "m"
    other = audit.Record("t", b"req-2", [], message=OUTPUT, source=Source("p", None, Direction.OUTPUTS))
    assert pb.ModelInferResponse.FromString(other.encoded(done)).id == "req-2"  # the key is part of it
