"""Producing to and reading from real Kafka topics in tests (no consumer group: reads from the start)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError


@dataclass
class Message:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


class KafkaIO:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def topics(self) -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5_000)
        try:
            await admin.start()
            return set(await admin.list_topics())
        except (KafkaError, OSError):
            return set()
        finally:
            await admin.close()

    async def wait_topics(self, *topics: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(topics) <= await self.topics():
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"topics {topics} did not appear within {timeout} s; have {await self.topics()}")

    async def produce(
        self, topic: str, value: bytes, *, key: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key, headers=headers or [])
        finally:
            await producer.stop()

    async def read(self, topic: str, key: bytes, *, timeout: float = 60) -> Message:
        """The first message with ``key`` on ``topic`` (every partition, from the beginning)."""
        deadline = time.monotonic() + timeout
        async with _consumer(self.bootstrap) as consumer:
            while time.monotonic() < deadline:
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.2)
                    continue
                assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
                if set(consumer.assignment()) != set(assigned):
                    consumer.assign(assigned)
                    await consumer.seek_to_beginning(*assigned)
                batches = await consumer.getmany(timeout_ms=500)
                for record in (r for batch in batches.values() for r in batch):
                    if record.key == key:
                        headers = {k: v for k, v in record.headers}
                        return Message(record.topic, record.key, record.value, headers)
        raise AssertionError(f"no message keyed {key!r} on {topic} within {timeout} s")

    async def absent(self, topic: str, key: bytes, *, wait: float) -> bool:
        try:
            await self.read(topic, key, timeout=wait)
        except AssertionError:
            return True
        return False


async def round_trips(
    producer: AIOKafkaProducer,
    reader: AIOKafkaConsumer,
    topic: str,
    answers: TopicPartition,
    value: bytes,
    count: int,
    *,
    key: str,
) -> list[float]:
    """Seconds from producing each of ``count`` records (keyed ``<key>-<n>``) to ``topic`` until
    ``reader`` returns a record with that key from ``answers`` (read from its end); one at a time."""
    reader.assign([answers])
    await reader.seek_to_end(answers)
    latencies = []
    for index in range(count):
        wanted = f"{key}-{index}".encode()
        started = time.perf_counter()
        await producer.send_and_wait(topic, value, key=wanted)
        async with asyncio.timeout(30):
            while not any(
                r.key == wanted for batch in (await reader.getmany(timeout_ms=1_000)).values() for r in batch
            ):
                pass
        latencies.append(time.perf_counter() - started)
    return latencies


@asynccontextmanager
async def _consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, metadata_max_age_ms=1_000
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
