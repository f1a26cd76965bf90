"""The shared Kafka config turned into aiokafka options: security and Kafka-named settings."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from apis.kafka import KafkaConfig
from pipelines import kafka_clients
from tests.kafka_broker import TansuBroker

FAST_SESSION = {"session.timeout.ms": "3000", "heartbeat.interval.ms": "1000"}  # Tansu joins after half


def test_sasl_over_tls_and_the_settings_reach_every_client(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("s3cret\n")
    config = KafkaConfig.from_mapping(
        {
            "bootstrap.servers": "k1:9093,k2:9093",
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": "meshserve",
            "sasl.password.file": str(tmp_path / "password"),
            "producer": {
                "linger.ms": "5",
                "message.max.bytes": "8388608",
                "request.timeout.ms": "30000",
                "compression.type": "gzip",
                "acks": "all",
                "enable.idempotence": "true",
            },
            "consumer": {
                "auto.offset.reset": "latest",
                "session.timeout.ms": "6000",
                "heartbeat.interval.ms": "2000",
                "max.poll.interval.ms": "60000",
                "fetch.max.wait.ms": "100",
                "message.max.bytes": "8388608",
            },
        }
    )
    producer = kafka_clients.producer_options(config)
    assert producer["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert (producer["security_protocol"], producer["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (producer["sasl_plain_username"], producer["sasl_plain_password"]) == ("meshserve", "s3cret")
    assert isinstance(producer["ssl_context"], ssl.SSLContext)
    assert producer["linger_ms"] == 5 and producer["max_request_size"] == 8388608
    assert producer["compression_type"] == "gzip" and producer["acks"] == "all"
    assert producer["enable_idempotence"] is True and producer["request_timeout_ms"] == 30000
    consumer = kafka_clients.consumer_options(config, "g")
    assert consumer["group_id"] == "g" and consumer["enable_auto_commit"] is False
    assert consumer["auto_offset_reset"] == "latest" and consumer["session_timeout_ms"] == 6000
    assert consumer["heartbeat_interval_ms"] == 2000 and consumer["max_poll_interval_ms"] == 60000
    assert consumer["fetch_max_wait_ms"] == 100 and consumer["max_partition_fetch_bytes"] == 8388608


def test_plain_text_defaults() -> None:
    options = kafka_clients.producer_options(KafkaConfig(("k:9092",)))
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options and "sasl_mechanism" not in options
    assert "compression_type" not in options
    consumer = kafka_clients.consumer_options(KafkaConfig(("k:9092",)), "g")
    assert consumer["auto_offset_reset"] == "earliest"
    # the reference's kafka.json session, not aiokafka's 10 s (it paces the embedded broker's joins)
    assert (consumer["session_timeout_ms"], consumer["heartbeat_interval_ms"]) == (6000, 3000)
    numeric = KafkaConfig.from_mapping({"bootstrap.servers": "k:1", "producer": {"acks": "1"}})
    assert kafka_clients.producer_options(numeric)["acks"] == 1


async def test_a_stopped_consumer_leaves_its_tansu_group_at_generation_0(kafka_broker: TansuBroker) -> None:
    # Tansu numbers generations from 0 and aiokafka left only from 1 on: the member stayed until its
    # session expired, and the next member's join waited ~1.8 session timeouts (decision 0023).
    config = KafkaConfig.from_mapping({"bootstrap.servers": kafka_broker.bootstrap, "consumer": FAST_SESSION})
    admin = kafka_clients.admin(config)
    await admin.start()
    try:
        await kafka_clients.ensure_topics(admin, config, ["t"])
        consumer = kafka_clients.consumer(config, "g")
        try:
            await consumer.start()
            consumer.subscribe(["t"])
            async with asyncio.timeout(30):
                while not consumer.assignment():
                    await consumer.getmany(timeout_ms=100)
            assert consumer._coordinator.generation == 0  # Tansu's first generation
            assert len(await members(admin, "g")) == 1
        finally:
            await consumer.stop()
        assert await members(admin, "g") == []
    finally:
        await admin.close()


async def members(admin: AIOKafkaAdminClient, group: str) -> list[object]:
    [response] = await admin.describe_consumer_groups([group])
    [described] = response.groups
    return list(described[-1])
