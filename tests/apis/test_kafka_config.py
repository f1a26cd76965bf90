from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apis.kafka import (
    KafkaConfig,
    KafkaConfigError,
    SaslMechanism,
    SecurityProtocol,
    consumer_bucket,
    consumer_group,
    fnv32a,
    parse_bootstrap,
    propagated,
)
from apis.kafka_flags import KafkaFlags, load_file, save_file
from apis.kafka_topics import Topics
from apis.validation import InvalidResource

# The reference's default kafka.json (seldon-pipelines.md §5.4).
REFERENCE = {
    "bootstrap.servers": "seldon-kafka-bootstrap.seldon-mesh:9092",
    "consumer": {
        "auto.offset.reset": "earliest",
        "message.max.bytes": "1000000000",
        "session.timeout.ms": "6000",
        "topic.metadata.propagation.max.ms": "300000",
    },
    "producer": {"linger.ms": "0", "message.max.bytes": "1000000000"},
    "topicPrefix": "seldon",
    "streams": {},
}


def test_the_references_default_kafka_json_is_read_as_it_is() -> None:
    config = KafkaConfig.from_mapping(REFERENCE)
    assert config.bootstrap_servers == ("seldon-kafka-bootstrap.seldon-mesh:9092",)
    assert config.topic_prefix == "seldon" and config.namespace == "default"
    assert config.consumer["message.max.bytes"] == 1_000_000_000
    assert config.producer["linger.ms"] == 0
    assert config.security_protocol is SecurityProtocol.PLAINTEXT


def test_a_config_written_to_a_file_reads_back_the_same(tmp_path: Path) -> None:
    config = KafkaConfig.from_mapping(
        {
            **REFERENCE,
            "namespace": "ns1",
            "consumerGroupIdPrefix": "myorg",
            "topics": {"numPartitions": 4, "replicationFactor": 3},
            "security.protocol": "sasl_ssl",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "meshserve",
            "sasl.password.file": str(tmp_path / "password"),
            "ssl.ca.location": str(tmp_path / "ca.crt"),
            "producer": {"compression.type": "gzip", "enable.idempotence": "true", "acks": "all"},
        }
    )
    save_file(config, tmp_path / "kafka.json")
    assert KafkaConfig.from_mapping(load_file(tmp_path / "kafka.json")) == config
    assert config.sasl_mechanism is SaslMechanism.SCRAM_SHA_512 and config.uses_tls


def test_yaml_files_are_read_too(tmp_path: Path) -> None:
    (tmp_path / "kafka.yaml").write_text("bootstrap.servers: 127.0.0.1:9092\ntopicPrefix: myorg\n")
    assert KafkaConfig.from_mapping(load_file(tmp_path / "kafka.yaml")).topic_prefix == "myorg"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bootstrap.servers": ""}, "bootstrap servers are empty"),
        ({"bootstrap.servers": "host"}, "is not HOST:PORT"),
        ({"bootstrap.servers": "host:99999"}, "is not HOST:PORT"),
        ({"bootstrap.servers": "a:1;rm -rf /:2"}, "is not HOST:PORT"),
        ({"bootstrap.servers": ",".join(f"h{i}:1" for i in range(33))}, "the limit is 32"),
        ({"topicPrefix": "bad prefix"}, "topicPrefix"),
        ({"topicPrefix": ""}, "topicPrefix is empty"),
        ({"namespace": "Bad_NS"}, "namespace name"),
        ({"topics": {"numPartitions": 0}}, "numPartitions 0 is outside"),
        ({"topics": {"numPartitions": 5000}}, "numPartitions 5000 is outside"),
        ({"topics": {"numPartitions": True}}, "whole number"),
        ({"topics": {"replicationFactor": 17}}, "replicationFactor 17 is outside"),
        ({"topics": {"partitions": 1}}, "takes numPartitions and replicationFactor only"),
        ({"producer": {"batch.size": "1"}}, "producer.batch.size is not a supported setting"),
        ({"consumer": {"auto.offset.reset": "smallest"}}, "not one of earliest, latest"),
        ({"consumer": {"session.timeout.ms": "-1"}}, "session.timeout.ms: -1 is not within 0..3600000"),
        ({"consumer": {"session.timeout.ms": "3000"}}, r"heartbeat.interval.ms \(3000\) must be .* below"),
        ({"consumer": {"heartbeat.interval.ms": "0"}}, "must be above 0"),
        ({"producer": {"message.max.bytes": str(2**31)}}, "message.max.bytes"),
        ({"producer": "linger.ms=0"}, "producer must be a mapping"),
        ({"streams": []}, "streams must be a mapping"),
        ({"security.protocol": "KERBEROS"}, "KERBEROS"),
        ({"security.protocol": "SASL_SSL"}, "needs sasl.mechanism"),
        ({"sasl.username": "u"}, "SASL settings given but security.protocol is PLAINTEXT"),
        ({"ssl.ca.location": "/ca"}, "TLS files given"),
        ({"security.protocol": "SSL", "ssl.certificate.location": "/c"}, "needs its key"),
        ({"sasl.mechanism": "GSSAPI"}, "GSSAPI"),
        ({"unknown.key": 1}, "unknown Kafka config key"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        KafkaConfig.from_mapping({**REFERENCE, **change})


def test_a_missing_bootstrap_is_refused() -> None:
    with pytest.raises(KafkaConfigError, match=r"bootstrap\.servers is missing"):
        KafkaConfig.from_mapping({"topicPrefix": "seldon"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "must hold a mapping"),
        ("{unclosed", "neither JSON nor YAML"),
        ("x" * (1024 * 1024 + 1), "larger"),
    ],
)
def test_a_bad_file_is_refused_naming_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "kafka.json"
    path.write_text(content)
    with pytest.raises(KafkaConfigError, match=message):
        load_file(path)
    with pytest.raises(KafkaConfigError, match="cannot read"):
        load_file(tmp_path / "missing.json")


def test_the_sasl_password_is_read_from_its_file_only_when_asked(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    config = KafkaConfig(
        ("b:9092",),
        security_protocol=SecurityProtocol.SASL_PLAINTEXT,
        sasl_mechanism=SaslMechanism.PLAIN,
        sasl_username="u",
        sasl_password_file=secret,
    )
    with pytest.raises(KafkaConfigError, match=r"cannot read sasl\.password\.file"):
        config.sasl_password()
    secret.write_text("s3cret\n")
    assert config.sasl_password() == "s3cret"
    assert "s3cret" not in json.dumps(config.to_mapping())


def test_flags_override_the_file_and_the_callers_bootstrap_is_the_last_resort(tmp_path: Path) -> None:
    (tmp_path / "kafka.json").write_text(json.dumps({**REFERENCE, "topics": {"numPartitions": 4}}))
    flags = KafkaFlags(
        kafka_config=str(tmp_path / "kafka.json"), kafka_namespace="ns2", kafka_replication_factor=2
    )
    config = flags.kafka_settings(bootstrap="127.0.0.1:1")
    assert config.bootstrap_servers == ("seldon-kafka-bootstrap.seldon-mesh:9092",)
    assert (config.namespace, config.partitions, config.replication_factor) == ("ns2", 4, 2)
    assert KafkaFlags().kafka_settings(bootstrap="127.0.0.1:1").bootstrap_servers == ("127.0.0.1:1",)
    given = KafkaFlags(kafka_bootstrap="k1:9092,k2:9092", kafka_partitions=3)
    assert given.kafka_settings(bootstrap="127.0.0.1:1").bootstrap_servers == ("k1:9092", "k2:9092")
    with pytest.raises(KafkaConfigError, match=r"bootstrap\.servers is missing"):
        KafkaFlags().kafka_settings()


def test_topic_names_follow_the_reference() -> None:
    topics = Topics("seldon", "seldon-mesh")
    assert topics.model_inputs("iris") == "seldon.seldon-mesh.model.iris.inputs"
    assert topics.model_outputs("iris") == "seldon.seldon-mesh.model.iris.outputs"
    assert topics.pipeline_inputs("p") == "seldon.seldon-mesh.pipeline.p.inputs"
    assert topics.pipeline_outputs("p") == "seldon.seldon-mesh.pipeline.p.outputs"
    assert topics.errors == "seldon.seldon-mesh.errors.errors"
    assert topics.model_of_input("seldon.seldon-mesh.model.iris.inputs") == "iris"
    assert topics.model_of_input("seldon.seldon-mesh.model.iris.outputs") is None
    assert topics.model_of_input("seldon.other.model.iris.inputs") is None
    assert topics.model_of_input("seldon.seldon-mesh.model.Bad_Name.inputs") is None


@pytest.mark.parametrize("name", ["", "a.b", "iris\n", "../x", "x" * 64])
def test_names_are_checked_before_they_become_topics(name: str) -> None:
    with pytest.raises(InvalidResource):
        Topics("seldon", "default").model_inputs(name)
    with pytest.raises(InvalidResource):
        Topics("seldon", "default").pipeline_outputs(name)


def test_a_topic_longer_than_kafka_allows_is_refused() -> None:
    with pytest.raises(InvalidResource, match="longer than Kafka's 249"):
        Topics("p" * 200, "default").model_inputs("m" * 63)


def test_consumer_groups_hash_models_as_the_reference_does() -> None:
    assert fnv32a("") == 0x811C9DC5
    assert fnv32a("a") == 0xE40C292C  # the FNV-1a test vector
    config = KafkaConfig(("b:1",), consumer_group_id_prefix="myorg", namespace="ns1")
    bucket = consumer_bucket("iris", 100)
    assert 0 <= bucket < 100
    assert consumer_group(config, "seldon-modelgateway", bucket) == f"myorg-ns1-seldon-modelgateway-{bucket}"
    assert consumer_group(KafkaConfig(("b:1",)), "seldon-modelgateway", 7) == "default-seldon-modelgateway-7"
    with pytest.raises(KafkaConfigError):
        consumer_bucket("iris", 0)


def test_only_x_headers_and_trace_context_travel() -> None:
    assert propagated("X-Foo") and propagated("x-request-id") and propagated("traceparent")
    assert not propagated("content-type") and not propagated("seldon-model")


def test_bootstrap_lists_are_trimmed() -> None:
    assert parse_bootstrap(" a:1 , [::1]:2 ") == ("a:1", "[::1]:2")
