"""Where a process's :class:`apis.kafka.KafkaConfig` comes from: a ``kafka.json`` file and flags.

The file is in the reference's shape (JSON or YAML, :func:`load_file`; the local stack writes one for
its components with :func:`save_file`); a process's ``--kafka-*`` flags (:class:`KafkaFlags`, the
``apis.settings`` rule) win over it. The SASL password is never a flag: it is read from a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apis.kafka import KafkaConfig, KafkaConfigError, SaslMechanism, SecurityProtocol
from apis.limits import MIB
from apis.settings import flag, non_negative_int

MAX_CONFIG_FILE_BYTES = 1 * MIB


def load_file(path: Path) -> dict[str, Any]:
    """A ``kafka.json`` (or YAML) file's mapping; raises :class:`KafkaConfigError` naming the file."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise KafkaConfigError(f"cannot read Kafka config {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise KafkaConfigError(f"Kafka config {path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")
    try:
        raw = yaml.safe_load(data.decode())  # JSON is YAML
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KafkaConfigError(f"Kafka config {path} is neither JSON nor YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise KafkaConfigError(f"Kafka config {path} must hold a mapping")
    return raw


def save_file(config: KafkaConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_mapping(), indent=2))


@dataclass(frozen=True)
class KafkaFlags:
    """The ``--kafka-*`` flags a process with Kafka takes (its config dataclass inherits them).

    Each given flag overrides the file's value (``--kafka-config``); empty/0 means "not given".
    Paths are kept as text so a process config holding them saves as JSON.
    """

    kafka_config: str = field(default="", metadata=flag("a kafka.json/YAML file (the reference's shape)"))
    kafka_bootstrap: str = field(default="", metadata=flag("Kafka's bootstrap servers, HOST:PORT[,...]"))
    kafka_security_protocol: str = field(
        default="", metadata=flag(f"one of {', '.join(SecurityProtocol)} (default PLAINTEXT)")
    )
    kafka_sasl_mechanism: str = field(default="", metadata=flag(f"one of {', '.join(SaslMechanism)}"))
    kafka_sasl_username: str = field(default="", metadata=flag("the SASL user"))
    kafka_sasl_password_file: str = field(default="", metadata=flag("a file holding the SASL password"))
    kafka_tls_ca: str = field(default="", metadata=flag("CA (PEM) the brokers' certificates chain to"))
    kafka_tls_cert: str = field(default="", metadata=flag("client certificate (PEM) for mutual TLS"))
    kafka_tls_key: str = field(default="", metadata=flag("its private key (PEM)"))
    kafka_topic_prefix: str = field(default="", metadata=flag("topic prefix (default seldon)"))
    kafka_namespace: str = field(default="", metadata=flag("namespace in topic names (default default)"))
    kafka_partitions: int = field(
        default=0, metadata=flag("partitions of each topic created (default 1)", parse=non_negative_int)
    )
    kafka_replication_factor: int = field(
        default=0,
        metadata=flag("replication factor of each topic created (default 1)", parse=non_negative_int),
    )

    def kafka_settings(self, *, bootstrap: str = "") -> KafkaConfig:
        """The file (if any) overridden by the flags given; ``bootstrap`` is the caller's fallback."""
        raw: dict[str, Any] = load_file(Path(self.kafka_config)) if self.kafka_config else {}
        flags = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password.file": self.kafka_sasl_password_file,
            "ssl.ca.location": self.kafka_tls_ca,
            "ssl.certificate.location": self.kafka_tls_cert,
            "ssl.key.location": self.kafka_tls_key,
            "topicPrefix": self.kafka_topic_prefix,
            "namespace": self.kafka_namespace,
        }
        raw.update({key: value for key, value in flags.items() if value})
        if bootstrap and "bootstrap.servers" not in raw:
            raw["bootstrap.servers"] = bootstrap
        topics = dict(raw.get("topics") or {})
        if self.kafka_partitions:
            topics["numPartitions"] = self.kafka_partitions
        if self.kafka_replication_factor:
            topics["replicationFactor"] = self.kafka_replication_factor
        if topics:
            raw["topics"] = topics
        return KafkaConfig.from_mapping(raw)
