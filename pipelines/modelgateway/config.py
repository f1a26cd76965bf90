"""The model gateway's settings: ``python -m pipelines.modelgateway`` flags, env ``MESHSERVE_MODELGATEWAY_*``.

The ``--kafka-*`` flags (and ``--kafka-config``, the reference's kafka.json) come from
:class:`apis.kafka.KafkaFlags`, shared with ``meshserve up``; the rest say where the scheduler and
Envoy are and how much work runs at once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from apis import settings
from apis.kafka import MAX_CONSUMERS, KafkaConfig, KafkaConfigError, KafkaFlags
from apis.logs import LEVELS
from apis.settings import flag, non_negative_int, positive_float
from apis.tls import ClientTls, TlsSettingsError

ENV_PREFIX = "MESHSERVE_MODELGATEWAY_"
SUBSCRIBER_NAME = "seldon-modelgateway"  # the reference's default subscriber and group component
MAX_WORKERS = 1_024
MAX_TIMEOUT_SECONDS = 3_600.0


def _bounded_int(low: int, high: int) -> settings.Parse:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _timeout(text: str) -> float:
    value = positive_float(text)
    if value > MAX_TIMEOUT_SECONDS:
        raise ValueError(f"{value} is above {MAX_TIMEOUT_SECONDS}")
    return value


@dataclass(frozen=True)
class ModelGatewayConfig(KafkaFlags):
    scheduler_host: str = field(default="127.0.0.1", metadata=flag("the scheduler's host"))
    scheduler_port: int = field(default=9004, metadata=flag("the Scheduler API port"))
    envoy_host: str = field(default="127.0.0.1", metadata=flag("Envoy's data-plane host"))
    envoy_port: int = field(default=9000, metadata=flag("Envoy's data-plane port"))
    workers: int = field(
        default=8,
        metadata=flag(
            "model calls in flight per consumer (env MODELGATEWAY_NUM_WORKERS in the reference)",
            parse=_bounded_int(1, MAX_WORKERS),
        ),
    )
    max_consumers: int = field(
        default=100,
        metadata=flag("consumers (groups) models are hashed over", parse=_bounded_int(1, MAX_CONSUMERS)),
    )
    request_timeout_seconds: float = field(
        default=120.0, metadata=flag("longest one model call may take", parse=_timeout)
    )
    topic_check_seconds: float = field(
        default=2.0,
        metadata=flag(
            "how often topics are checked and recreated (an in-memory broker restarted)", parse=_timeout
        ),
    )
    health_host: str = field(default="127.0.0.1", metadata=flag("address /ready and /metrics bind to"))
    health_port: int = field(
        default=9012, metadata=flag("/ready and /metrics; 0 picks a free port", parse=non_negative_int)
    )
    log_level: str = field(default="info", metadata=flag(f"one of {', '.join(LEVELS)}"))
    tls_ca: Path | None = field(default=None, metadata=flag("CA (PEM) the scheduler's certificate chains to"))
    tls_cert: Path | None = field(default=None, metadata=flag("client certificate (PEM) for the scheduler"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))

    @property
    def scheduler_address(self) -> str:
        return f"{self.scheduler_host}:{self.scheduler_port}"

    @property
    def scheduler_tls(self) -> ClientTls | None:
        return ClientTls.from_settings(self.tls_ca, self.tls_cert, self.tls_key)


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[ModelGatewayConfig, KafkaConfig]:
    """The gateway's settings and the Kafka config they name; a bad one ends with a usage error."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.modelgateway",
        description="meshserve model gateway: consumes model input topics, calls each model through "
        "Envoy, produces the answer to its output topic (or the error to the errors topic). Every "
        "flag falls back to the environment variable shown.",
    )
    settings.add_flags(parser, ModelGatewayConfig, prefix=ENV_PREFIX, env=env)
    args = parser.parse_args(argv)
    if args.log_level not in LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LEVELS)}")
    config = settings.build(ModelGatewayConfig, args)
    try:
        config.scheduler_tls  # noqa: B018 - checks the three files are given together
        kafka = config.kafka_settings()
    except (TlsSettingsError, KafkaConfigError) as exc:
        parser.error(str(exc))
    return config, kafka
