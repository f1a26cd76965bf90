"""The one Kafka configuration every component shares, and the names it puts on Kafka.

Config (docs/decisions/0018): :class:`KafkaConfig` is validated and bounded when built. It is read
in the reference's ``kafka.json`` shape (JSON or YAML; ``apis.kafka_flags`` loads the file and
applies a process's ``--kafka-*`` flags over it)::

    {"bootstrap.servers": "127.0.0.1:9092", "topicPrefix": "seldon", "namespace": "default",
     "consumerGroupIdPrefix": "", "topics": {"numPartitions": 1, "replicationFactor": 1},
     "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u",
     "sasl.password.file": "/secrets/password", "ssl.ca.location": "/secrets/ca.crt",
     "ssl.certificate.location": "/secrets/tls.crt", "ssl.key.location": "/secrets/tls.key",
     "consumer": {"auto.offset.reset": "earliest"}, "producer": {"linger.ms": "0"}}

Secrets never sit in the config or on a command line: the SASL password is read from a file.
Producer and consumer settings use Kafka's own names; an unknown one is refused by name rather than
ignored.

Names (seldon-reference-implementation.md §7.1): message header names; topic names come from
``apis.kafka_topics`` (:attr:`KafkaConfig.topics`); :func:`consumer_group` gives a model's consumer
group ``[<groupPrefix>-]<namespace>-seldon-modelgateway-<bucket>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from apis.kafka_topics import Topics
from apis.limits import KIB, MIB
from apis.settings import int_within
from apis.validation import InvalidResource, validate_name

# -- header names (seldon-pipelines.md §5.3, seldon-reference-implementation.md §7.1) --------------

PIPELINE_HEADER = "pipeline"  # the pipeline a message belongs to (set by the pipeline gateway)
ERROR_HEADER = "seldon-pipeline-errors"  # on errors-topic messages: the model that failed
INFER_TYPE_HEADER = "seldon-infer-type"  # optional: how the value is encoded
TRACEPARENT_HEADER = "traceparent"
# On a copy of a message whose call was made already (the dataflow engine runs synchronous requests
# itself and writes every message for audit, decision 0020): read it (inspect, other pipelines'
# externalInputs), never execute it again. Value: the engine that made the call.
AUDIT_HEADER = "meshserve-audit"


class InferType(StrEnum):
    """The values of :data:`INFER_TYPE_HEADER`; without it, protobuf is tried first, then JSON."""

    JSON_REQUEST = "json/inferModelRequest"
    JSON_RESPONSE = "json/inferModelResponse"
    PROTO_REQUEST = "proto/InferModelRequest"
    PROTO_RESPONSE = "proto/InferModelResponse"


def propagated(name: str) -> bool:
    """Headers that travel with a request from message to message: ``x-*`` and trace context."""
    lowered = name.lower()
    return lowered.startswith("x-") or lowered == TRACEPARENT_HEADER


# -- bounds ----------------------------------------------------------------------------------------

MAX_BOOTSTRAP_SERVERS = 32
MAX_PARTITIONS = 1_024
MAX_REPLICATION_FACTOR = 16
MAX_PREFIX_LENGTH = 64
MAX_MESSAGE_BYTES = 1_024 * MIB  # the reference's default message.max.bytes is 1e9
MAX_MILLISECONDS = 3_600_000
MAX_CONSUMERS = 1_000

_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})"
)
_PREFIX = re.compile(r"[A-Za-z0-9._-]+")  # the reference's topic-prefix rule


class KafkaConfigError(ValueError):
    """A Kafka setting is malformed, out of bounds or unknown; the message names it."""


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


# Durations in milliseconds and sizes in bytes, bounded (errors read "... is not within LOW..HIGH").
_ms = int_within(0, MAX_MILLISECONDS)
_bytes = int_within(KIB, MAX_MESSAGE_BYTES)


def _one_of(*choices: str) -> Any:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _boolean(text: str) -> bool:
    return bool(_one_of("true", "false")(text.lower()) == "true")


# Producer and consumer settings understood, by Kafka's name; the Kafka edge maps them to its client.
PRODUCER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "linger.ms": _ms,
        "message.max.bytes": _bytes,
        "request.timeout.ms": _ms,
        "compression.type": _one_of("none", "gzip", "snappy", "lz4", "zstd"),
        "acks": _one_of("0", "1", "all", "-1"),
        "enable.idempotence": _boolean,
    }
)
CONSUMER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "auto.offset.reset": _one_of("earliest", "latest"),
        "session.timeout.ms": _ms,
        "heartbeat.interval.ms": _ms,
        "max.poll.interval.ms": _ms,
        "fetch.max.wait.ms": _ms,
        "message.max.bytes": _bytes,
        # In the reference's default kafka.json; a librdkafka setting aiokafka has no use for.
        "topic.metadata.propagation.max.ms": _ms,
    }
)

# What a consumer runs with when the config leaves a setting out: the reference's default kafka.json
# sets session.timeout.ms to 6000 (aiokafka's own default is 10000); the heartbeat is Kafka's and
# librdkafka's default. The session also paces the embedded broker's rebalances: Tansu answers a
# join after half of it, and a member that vanished without leaving holds a join for the whole of it.
CONSUMER_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"auto.offset.reset": "earliest", "session.timeout.ms": 6_000, "heartbeat.interval.ms": 3_000}
)


def _client_settings(raw: object, known: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise KafkaConfigError(f"{what} must be a mapping of Kafka settings")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise KafkaConfigError(f"{what}.{key} is not a supported setting ({', '.join(sorted(known))})")
        try:
            values[key] = known[key](str(value).strip())
        except ValueError as exc:
            raise KafkaConfigError(f"{what}.{key}: {exc}") from exc
    return MappingProxyType(values)


def parse_bootstrap(text: str) -> tuple[str, ...]:
    """``HOST:PORT[,HOST:PORT...]``, each checked by full match; raises :class:`KafkaConfigError`."""
    servers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not servers:
        raise KafkaConfigError("bootstrap servers are empty: give HOST:PORT[,HOST:PORT...]")
    if len(servers) > MAX_BOOTSTRAP_SERVERS:
        raise KafkaConfigError(f"{len(servers)} bootstrap servers; the limit is {MAX_BOOTSTRAP_SERVERS}")
    for server in servers:
        match = _HOST_PORT.fullmatch(server)
        if match is None or not 1 <= int(match["port"]) <= 65_535:
            raise KafkaConfigError(f"bootstrap server {server[:80]!r} is not HOST:PORT")
    return servers


@dataclass(frozen=True)
class KafkaConfig:
    """Where Kafka is, how to reach it safely, and how topics are named and made."""

    bootstrap_servers: tuple[str, ...]
    topic_prefix: str = "seldon"
    namespace: str = "default"
    consumer_group_id_prefix: str = ""
    partitions: int = 1
    replication_factor: int = 1
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str = ""
    sasl_password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    producer: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    consumer: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        parse_bootstrap(",".join(self.bootstrap_servers))
        for value, what in ((self.topic_prefix, "topicPrefix"), (self.consumer_group_id_prefix, "group")):
            if len(value) > MAX_PREFIX_LENGTH or (value and not _PREFIX.fullmatch(value)):
                raise KafkaConfigError(f"{what} {value[:80]!r} must be 1-{MAX_PREFIX_LENGTH} of A-Za-z0-9._-")
        if not self.topic_prefix:
            raise KafkaConfigError("topicPrefix is empty")
        try:
            validate_name(self.namespace, kind="namespace")
        except InvalidResource as exc:
            raise KafkaConfigError(str(exc)) from exc
        _bounded(self.partitions, 1, MAX_PARTITIONS, "topics.numPartitions")
        _bounded(self.replication_factor, 1, MAX_REPLICATION_FACTOR, "topics.replicationFactor")
        consumer = self.consumer_settings
        if not 0 < consumer["heartbeat.interval.ms"] < consumer["session.timeout.ms"]:
            raise KafkaConfigError(
                f"consumer.heartbeat.interval.ms ({consumer['heartbeat.interval.ms']}) must be above 0 "
                f"and below consumer.session.timeout.ms ({consumer['session.timeout.ms']})"
            )
        self._check_security()

    def _check_security(self) -> None:
        sasl = self.security_protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)
        if sasl and (self.sasl_mechanism is None or not self.sasl_username or not self.sasl_password_file):
            raise KafkaConfigError(
                f"security.protocol {self.security_protocol} needs sasl.mechanism, sasl.username and "
                "sasl.password.file"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password_file):
            raise KafkaConfigError(f"SASL settings given but security.protocol is {self.security_protocol}")
        tls = self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)
        if not tls and (self.tls_ca or self.tls_cert or self.tls_key):
            raise KafkaConfigError(f"TLS files given but security.protocol is {self.security_protocol}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise KafkaConfigError(
                "a client certificate needs its key (ssl.certificate.location and ssl.key.location)"
            )

    @property
    def consumer_settings(self) -> Mapping[str, Any]:
        """The consumer settings given, over :data:`CONSUMER_DEFAULTS`."""
        return MappingProxyType({**CONSUMER_DEFAULTS, **self.consumer})

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    def sasl_password(self) -> str:
        """Read when a client connects, so a rotated password file is picked up by a restart."""
        if self.sasl_password_file is None:
            return ""
        try:
            return self.sasl_password_file.read_text().strip()
        except OSError as exc:
            raise KafkaConfigError(
                f"cannot read sasl.password.file {self.sasl_password_file}: {exc}"
            ) from exc

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix, self.namespace)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> KafkaConfig:
        """The reference's ``kafka.json`` shape (module docstring); unknown top-level keys are refused."""
        unknown = set(raw) - _FILE_KEYS
        if unknown:
            raise KafkaConfigError(f"unknown Kafka config key(s): {', '.join(sorted(map(str, unknown)))}")
        if "bootstrap.servers" not in raw:
            raise KafkaConfigError("bootstrap.servers is missing")
        topics = raw.get("topics") or {}
        if not isinstance(topics, Mapping) or set(topics) - {"numPartitions", "replicationFactor"}:
            raise KafkaConfigError("topics takes numPartitions and replicationFactor only")
        if not isinstance(raw.get("streams", {}), Mapping):
            raise KafkaConfigError("streams must be a mapping")
        try:
            return cls(
                bootstrap_servers=parse_bootstrap(str(raw["bootstrap.servers"])),
                topic_prefix=str(raw.get("topicPrefix", "seldon")),
                namespace=str(raw.get("namespace", "default")),
                consumer_group_id_prefix=str(raw.get("consumerGroupIdPrefix", "")),
                partitions=_integer(topics.get("numPartitions", 1), "topics.numPartitions"),
                replication_factor=_integer(topics.get("replicationFactor", 1), "topics.replicationFactor"),
                security_protocol=SecurityProtocol(str(raw.get("security.protocol", "PLAINTEXT")).upper()),
                sasl_mechanism=SaslMechanism(str(raw["sasl.mechanism"]).upper())
                if raw.get("sasl.mechanism")
                else None,
                sasl_username=str(raw.get("sasl.username", "")),
                sasl_password_file=_path(raw.get("sasl.password.file")),
                tls_ca=_path(raw.get("ssl.ca.location")),
                tls_cert=_path(raw.get("ssl.certificate.location")),
                tls_key=_path(raw.get("ssl.key.location")),
                producer=_client_settings(raw.get("producer"), PRODUCER_SETTINGS, "producer"),
                consumer=_client_settings(raw.get("consumer"), CONSUMER_SETTINGS, "consumer"),
            )
        except ValueError as exc:  # a StrEnum given an unknown value
            if isinstance(exc, KafkaConfigError):
                raise
            raise KafkaConfigError(str(exc)) from exc

    def to_mapping(self) -> dict[str, Any]:
        """The file shape :meth:`from_mapping` reads back (the local stack writes it for its components)."""
        raw: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.bootstrap_servers),
            "topicPrefix": self.topic_prefix,
            "namespace": self.namespace,
            "consumerGroupIdPrefix": self.consumer_group_id_prefix,
            "topics": {"numPartitions": self.partitions, "replicationFactor": self.replication_factor},
            "security.protocol": str(self.security_protocol),
            "producer": {k: _shown(v) for k, v in self.producer.items()},
            "consumer": {k: _shown(v) for k, v in self.consumer.items()},
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password.file": self.sasl_password_file,
            "ssl.ca.location": self.tls_ca,
            "ssl.certificate.location": self.tls_cert,
            "ssl.key.location": self.tls_key,
        }
        raw.update({key: str(value) for key, value in optional.items() if value})
        return raw


_FILE_KEYS = frozenset(
    {
        "bootstrap.servers",
        "topicPrefix",
        "namespace",
        "consumerGroupIdPrefix",
        "topics",
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password.file",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "producer",
        "consumer",
        "streams",  # the dataflow engine's (Kafka Streams in the reference); accepted, not used yet
        "debug",  # librdkafka's debug contexts in the reference; accepted, not used
    }
)


def _bounded(value: int, low: int, high: int, what: str) -> None:
    if not low <= value <= high:
        raise KafkaConfigError(f"{what} {value} is outside {low}..{high}")


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise KafkaConfigError(f"{what} must be a whole number")
    try:
        return int(value)
    except ValueError as exc:
        raise KafkaConfigError(f"{what} {value!r} is not a whole number") from exc


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# -- consumer groups -------------------------------------------------------------------------------


def fnv32a(text: str) -> int:
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def consumer_bucket(name: str, max_consumers: int) -> int:
    """Which of ``max_consumers`` consumers serves ``name`` (FNV-32a, as the reference hashes)."""
    _bounded(max_consumers, 1, MAX_CONSUMERS, "max consumers")
    return fnv32a(name) % max_consumers


def consumer_group(config: KafkaConfig, component: str, bucket: int) -> str:
    """``[<consumerGroupIdPrefix>-]<namespace>-<component>-<bucket>``: ``default-seldon-modelgateway-17``."""
    parts = [config.consumer_group_id_prefix] if config.consumer_group_id_prefix else []
    return "-".join([*parts, config.namespace, component, str(bucket)])
