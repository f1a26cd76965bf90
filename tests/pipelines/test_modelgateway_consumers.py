"""A model gateway bucket: audit copies are passed over without a task and committed seldom."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from apis.kafka import AUDIT_HEADER, KafkaConfig
from pipelines.modelgateway import consumers
from pipelines.modelgateway.consumers import Bucket

PARTITION = TopicPartition("seldon.default.model.m.inputs", 0)


def _record(offset: int, *, audit: bool) -> ConsumerRecord[bytes, bytes]:
    headers = [(AUDIT_HEADER, b"engine-0")] if audit else []
    return ConsumerRecord(
        PARTITION.topic,
        0,
        offset,
        0,
        0,
        b"req",
        b"v",
        None,
        3,
        1,
        headers,
    )


class ScriptedConsumer:
    """Hands out the scripted fetches, then empty ones; counts commits."""

    def __init__(self, fetches: list[list[ConsumerRecord[bytes, bytes]]]) -> None:
        self.fetches = fetches
        self.commits = 0
        self.committed: list[dict[TopicPartition, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, Any]:
        await asyncio.sleep(0.001)
        return {PARTITION: self.fetches.pop(0)} if self.fetches else {}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits += 1
        self.committed.append({p: o.offset for p, o in offsets.items()})

    def assignment(self) -> set[TopicPartition]:
        return {PARTITION}


async def _consume(bucket: Bucket, consumer: ScriptedConsumer, until: Any) -> None:
    task = asyncio.create_task(bucket._consume(consumer))
    try:
        async with asyncio.timeout(10):
            while not until():
                await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_skipped_records_reach_no_handler_and_a_fetch_of_only_those_commits_seldom(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(consumers, "IDLE_COMMIT_SECONDS", 3600.0)
    handled: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        handled.append(record.offset)

    def skip(record: ConsumerRecord[bytes, bytes]) -> bool:
        return any(name == AUDIT_HEADER for name, _ in record.headers)

    bucket = Bucket(
        KafkaConfig.from_mapping({"bootstrap.servers": "127.0.0.1:9092"}),
        "g",
        handler,
        workers=8,
        replica="gw-a",
        skip=skip,
    )
    audit_only = [[_record(i, audit=True)] for i in range(5)]
    consumer = ScriptedConsumer([*audit_only, [_record(5, audit=True), _record(6, audit=False)]])
    await _consume(bucket, consumer, lambda: handled == [6] and consumer.commits == 2)
    # the first audit-only fetch commits (nothing was committed yet), the next four wait; the fetch
    # with a real request commits everything read so far at once
    assert consumer.commits == 2 and consumer.committed == [{PARTITION: 1}, {PARTITION: 7}]
    assert handled == [6]
