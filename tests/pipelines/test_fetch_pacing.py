"""Fetch waits that follow the traffic: short while records flow, the configured one at idle."""

from __future__ import annotations

import statistics

from aiokafka import AIOKafkaProducer, TopicPartition

from apis.kafka import KafkaConfig
from pipelines import kafka_clients
from pipelines.fetch_pacing import BUSY_HOLD_S, BUSY_WAIT_MS, FetchPacing
from tests.e2e.kafka_io import round_trips
from tests.kafka_broker import TansuBroker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_is_short_from_the_first_records_until_a_hold_passes_without_any() -> None:
    clock = Clock()
    pacing = FetchPacing(500, clock=clock)
    assert pacing.after_poll(False) == 500  # idle from the start
    assert pacing.after_poll(True) == BUSY_WAIT_MS
    clock.now += BUSY_HOLD_S / 2
    assert pacing.after_poll(False) == BUSY_WAIT_MS  # a quiet poll inside the hold
    assert pacing.after_poll(True) == BUSY_WAIT_MS  # records again: the hold starts over
    clock.now += BUSY_HOLD_S * 0.9
    assert pacing.after_poll(False) == BUSY_WAIT_MS
    clock.now += BUSY_HOLD_S * 0.2
    assert pacing.after_poll(False) == 500  # a whole hold without records


def test_a_configured_wait_shorter_than_the_busy_one_is_kept() -> None:
    pacing = FetchPacing(2, clock=Clock())
    assert pacing.after_poll(True) == 2 and pacing.after_poll(False) == 2


async def test_records_in_a_row_reach_a_consumer_of_the_embedded_broker_without_the_long_wait(
    kafka_broker: TansuBroker,
) -> None:
    # Tansu answers a fetch only when its wait runs out: at the default 500 ms a record waited
    # 250 ms on average. After the first record the consumer's fetches wait BUSY_WAIT_MS.
    config = KafkaConfig.from_mapping({"bootstrap.servers": kafka_broker.bootstrap})
    admin = kafka_clients.admin(config)
    await admin.start()
    await kafka_clients.ensure_topics(admin, config, ["paced"])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=0)
    consumer = kafka_clients.Consumer(**kafka_clients.consumer_options(config, None))
    await producer.start()
    await consumer.start()
    try:
        latencies = await round_trips(
            producer, consumer, "paced", TopicPartition("paced", 0), b"x", 8, key="paced"
        )
        assert consumer._fetcher._fetch_max_wait_ms == BUSY_WAIT_MS
        # Unpaced, each of these is uniform over 0-500 ms; paced, each takes a few ms.
        assert statistics.median(latencies[1:]) < 0.1, latencies
    finally:
        await producer.stop()
        await consumer.stop()
