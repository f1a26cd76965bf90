"""The dataflow engine's settings: ``python -m pipelines.engine`` flags, env ``MESHSERVE_ENGINE_*``.

The ``--kafka-*`` flags come from :class:`apis.kafka_flags.KafkaFlags` (shared with ``meshserve up``), the
scheduler, Envoy, log and TLS flags from :class:`pipelines.service.ServiceFlags`; the rest say
where the gateway listens and the bounds of its work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from apis.kafka import KafkaConfig
from apis.settings import flag, int_within, non_negative_int, seconds_up_to
from apis.validation import validate_host, validate_name
from pipelines import service
from pipelines.service import ServiceFlags

ENV_PREFIX = "MESHSERVE_ENGINE_"
MAX_RUNS = 100_000
MAX_SECONDS = 3_600.0


@dataclass(frozen=True)
class EngineConfig(ServiceFlags):
    name: str = field(
        default="dataflow-engine",
        metadata=flag("the name it subscribes to the scheduler under (unique per engine)"),
    )
    host: str = field(default="127.0.0.1", metadata=flag("address the pipeline gateway binds to"))
    advertise_host: str = field(
        default="",
        metadata=flag("address Envoy reaches the gateway at, sent to the scheduler; empty: --host"),
    )
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


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[EngineConfig, KafkaConfig]:
    return service.parse_config(
        EngineConfig,
        argv,
        env,
        prog="python -m pipelines.engine",
        description="meshserve dataflow engine and pipeline gateway: runs the pipelines the scheduler "
        "gives it, answers their synchronous requests (HTTP and gRPC), and writes every message to its "
        "Kafka topic.",
        prefix=ENV_PREFIX,
        check=_check,
    )


def _check(config: EngineConfig) -> None:
    validate_name(config.name, kind="dataflow engine")
    validate_host(config.advertise_host or config.host, what="--advertise-host")
