"""The engine's batched steps (pipelines.engine.batcher): one model call per batch, its request and
answer on the step's model topics keyed by the request that completed it, every failure reported."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from apis.kafka import ERROR_HEADER, PIPELINE_HEADER
from apis.kafka_topics import Topics
from pipelines.engine import batcher as batcher_module
from pipelines.engine.audit import Record, TopicWriter
from pipelines.engine.batcher import StepBatcher
from pipelines.engine.models import EnvoyModels, Fault, ModelCallFailed
from pipelines.parts import Batch
from pipelines.tensors import Message, Tensor

TOPICS = Topics("seldon", "default")


class FakeModels:
    """Answers ``is_drift`` with the number of rows it got; can be told to fail or stall."""

    def __init__(self, *, error: Exception | None = None, stall: asyncio.Event | None = None) -> None:
        self.calls: list[tuple[str, Message, dict[str, str]]] = []
        self.error = error
        self.stall = stall

    async def call(self, model: str, tensors: Message, headers: Mapping[str, str]) -> tuple[Message, str]:
        self.calls.append((model, tensors, dict(headers)))
        if self.stall is not None:
            await self.stall.wait()
        if self.error is not None:
            raise self.error
        return (Tensor("is_drift", "INT64", (1, 1), [tensors[0].shape[0]]),), f":{model}_1:"


def row(value: int) -> Message:
    return (Tensor("x", "FP32", (1, 2), [value, value]),)


def headers(n: int) -> dict[str, str]:
    return {"x-request-id": f"r{n}", "x-foo": "bar"}


def queued(writer: TopicWriter) -> list[Record]:
    queue = writer._queue
    return [queue.get_nowait() for _ in range(queue.qsize())]


def make(batch: Batch, models: FakeModels) -> tuple[StepBatcher, TopicWriter]:
    writer = TopicWriter(TOPICS, "engine-0", CollectorRegistry())
    return StepBatcher("cifar", "drift", batch, cast(EnvoyModels, models), writer), writer


async def _until(condition: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_full_batch_is_one_call_written_under_the_last_request_id() -> None:
    models = FakeModels()
    batcher, writer = make(Batch(size=3), models)
    for n in (1, 2, 3):
        batcher.offer("drift", row(n), headers(n))
    await _until(lambda: writer._queue.qsize() == 2)
    [(model, tensors, sent)] = models.calls
    assert model == "drift" and sent == headers(3)
    assert tensors[0].shape == (3, 2) and tensors[0].data == [1, 1, 2, 2, 3, 3]
    request, response = queued(writer)
    assert (request.topic, response.topic) == (
        "seldon.default.model.drift.inputs",
        "seldon.default.model.drift.outputs",
    )
    assert request.key == response.key == b"r3"
    assert (PIPELINE_HEADER, b"cifar") in response.headers and ("x-foo", b"bar") in response.headers
    assert response.message == (Tensor("is_drift", "INT64", (1, 1), [3]),)
    assert batcher.held == 0
    await batcher.close()


async def test_a_partial_batch_is_sent_when_its_window_ends_and_not_before() -> None:
    models = FakeModels()
    batcher, _ = make(Batch(size=20, window_ms=100), models)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batcher.offer("drift", row(1), headers(1))
    batcher.offer("drift", row(2), headers(2))
    await _until(lambda: models.calls)
    assert loop.time() - started >= 0.09  # the window, give or take the loop's clock resolution
    assert models.calls[0][1][0].shape == (2, 2) and batcher.held == 0
    batcher.offer("drift", row(3), headers(3))  # a new window starts with the next message
    await _until(lambda: len(models.calls) == 2)
    assert models.calls[1][1][0].shape == (1, 2)
    await batcher.close()


async def test_without_a_window_a_partial_batch_waits_and_is_dropped_on_close() -> None:
    models = FakeModels()
    batcher, writer = make(Batch(size=2), models)
    batcher.offer("drift", row(1), headers(1))
    await asyncio.sleep(0.05)
    assert models.calls == [] and batcher.held == 1
    await batcher.close()
    assert queued(writer) == []


async def test_a_message_that_does_not_stack_is_an_error_for_its_request_only() -> None:
    models = FakeModels()
    batcher, writer = make(Batch(size=2), models)
    batcher.offer("drift", row(1), headers(1))
    batcher.offer("drift", (Tensor("x", "INT32", (1, 2), [1, 1]),), headers(2))
    [error] = queued(writer)
    assert error.topic == "seldon.default.errors.errors" and error.key == b"r2"
    assert (ERROR_HEADER, b"drift") in error.headers
    assert b"step drift: the message cannot join the batch: tensor x is INT32" in error.value
    batcher.offer("drift", row(3), headers(3))
    await _until(lambda: models.calls)
    assert models.calls[0][1][0].data == [1, 1, 3, 3]
    await batcher.close()


async def test_a_failing_model_writes_the_batch_input_and_an_error_naming_the_step() -> None:
    models = FakeModels(error=ModelCallFailed("drift", Fault.MODEL, "model drift answered HTTP 500: boom"))
    batcher, writer = make(Batch(size=1), models)
    batcher.offer("drift", row(1), headers(1))
    await _until(lambda: writer._queue.qsize() == 2)
    request, error = queued(writer)
    assert request.topic == "seldon.default.model.drift.inputs"
    assert error.topic == "seldon.default.errors.errors" and error.key == b"r1"
    assert error.value == b"pipeline cifar: step drift failed on a batch: model drift answered HTTP 500: boom"
    await batcher.close()


async def test_batches_beyond_the_calls_in_flight_are_dropped_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batcher_module, "MAX_CALLS", 2)
    stall = asyncio.Event()
    models = FakeModels(stall=stall)
    batcher, writer = make(Batch(size=1), models)
    for n in (1, 2, 3):
        batcher.offer("drift", row(n), headers(n))
    await _until(lambda: len(models.calls) == 2)
    errors = [r for r in queued(writer) if r.topic.endswith("errors.errors")]
    assert [e.key for e in errors] == [b"r3"]
    assert b"a batch of 1 messages is dropped: 2 batches are being called already" in errors[0].value
    stall.set()
    await _until(lambda: writer._queue.qsize() == 2)  # the two answers
    await batcher.close()


async def test_close_cancels_calls_in_flight_and_the_window_timer() -> None:
    stall = asyncio.Event()
    models = FakeModels(stall=stall)
    batcher, _ = make(Batch(size=1), models)
    batcher.offer("drift", row(1), headers(1))
    windowed, _ = make(Batch(size=5, window_ms=60_000), FakeModels())
    windowed.offer("drift", row(1), headers(1))
    await _until(lambda: models.calls)
    await asyncio.wait_for(batcher.close(), 5)
    await asyncio.wait_for(windowed.close(), 5)


async def test_a_message_offered_after_close_is_refused_with_an_error() -> None:
    models = FakeModels()
    batcher, writer = make(Batch(size=1), models)
    await batcher.close()
    batcher.offer("drift", row(1), headers(1))
    [error] = queued(writer)
    assert error.key == b"r1" and b"not batched, the pipeline version is gone" in error.value
    assert models.calls == [] and batcher.held == 0
