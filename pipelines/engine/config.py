"""The dataflow engine's settings: ``python -m pipelines.engine`` flags, env ``MESHSERVE_ENGINE_*``.

The ``--kafka-*`` flags come from :class:`apis.kafka.KafkaFlags` (shared with ``meshserve up``);
the rest say where the scheduler and Envoy are, where the gateway listens, and the bounds of its work.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from apis import settings
from apis.kafka import KafkaConfig, KafkaConfigError, KafkaFlags
from apis.logs import LEVELS
from apis.settings import flag, int_within, non_negative_int, seconds_up_to
from apis.tls import ClientTls, TlsSettingsError
from apis.validation import InvalidResource, validate_name

ENV_PREFIX = "MESHSERVE_ENGINE_"
MAX_RUNS = 100_000
MAX_SECONDS = 3_600.0


@dataclass(frozen=True)
class EngineConfig(KafkaFlags):
    name: str = field(
        default="dataflow-engine",
        metadata=flag("the name it subscribes to the scheduler under (unique per engine)"),
    )
    scheduler_host: str = field(default="127.0.0.1", metadata=flag("the scheduler's host"))
    scheduler_port: int = field(
        default=9004, metadata=flag("the Scheduler API port (Chainer is served there)")
    )
    envoy_host: str = field(
        default="127.0.0.1", metadata=flag("Envoy's data-plane host (models are called there)")
    )
    envoy_port: int = field(default=9000, metadata=flag("Envoy's data-plane port"))
    host: str = field(default="127.0.0.1", metadata=flag("address the pipeline gateway binds to"))
    http_port: int = field(default=9010, metadata=flag("pipeline gateway, HTTP", parse=non_negative_int))
    grpc_port: int = field(default=9011, metadata=flag("pipeline gateway, gRPC", parse=non_negative_int))
    health_port: int = field(
        default=9013, metadata=flag("/ready and /metrics; 0 picks a free port", parse=non_negative_int)
    )
    max_runs: int = field(
        default=1_024,
        metadata=flag("requests running at once (sync and Kafka-driven)", parse=int_within(1, MAX_RUNS)),
    )
    model_connections: int = field(
        default=256, metadata=flag("connections to Envoy for model calls", parse=int_within(1, MAX_RUNS))
    )
    request_timeout_seconds: float = field(
        default=60.0,
        metadata=flag("longest deadline of a synchronous request", parse=seconds_up_to(MAX_SECONDS)),
    )
    run_timeout_seconds: float = field(
        default=120.0,
        metadata=flag("longest a run (async branches included) may take", parse=seconds_up_to(MAX_SECONDS)),
    )
    join_pending_seconds: float = field(
        default=60.0,
        metadata=flag(
            "how long other pipelines' data waits for a join to complete", parse=seconds_up_to(MAX_SECONDS)
        ),
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
) -> tuple[EngineConfig, KafkaConfig]:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.engine",
        description="meshserve dataflow engine and pipeline gateway: runs the pipelines the scheduler "
        "gives it, answers their synchronous requests (HTTP and gRPC), and writes every message to its "
        "Kafka topic. Every flag falls back to the environment variable shown.",
    )
    settings.add_flags(parser, EngineConfig, prefix=ENV_PREFIX, env=env)
    args = parser.parse_args(argv)
    if args.log_level not in LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LEVELS)}")
    config = settings.build(EngineConfig, args)
    try:
        validate_name(config.name, kind="dataflow engine")
        config.scheduler_tls  # noqa: B018 - checks the three files are given together
        kafka = config.kafka_settings()
    except (TlsSettingsError, KafkaConfigError, InvalidResource) as exc:
        parser.error(str(exc))
    return config, kafka
