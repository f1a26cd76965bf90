"""The model gateway's settings: ``python -m pipelines.modelgateway`` flags, env ``MESHSERVE_MODELGATEWAY_*``.

The ``--kafka-*`` flags (and ``--kafka-config``, the reference's kafka.json) come from
:class:`apis.kafka_flags.KafkaFlags`, shared with ``meshserve up``; the scheduler, Envoy, log and TLS
flags from :class:`pipelines.service.ServiceFlags`; the rest name the replica and say how much
work runs at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from apis.kafka import MAX_CONSUMERS, KafkaConfig
from apis.settings import flag, int_within, non_negative_int, seconds_up_to
from apis.validation import validate_name
from pipelines import service
from pipelines.service import ServiceFlags

ENV_PREFIX = "MESHSERVE_MODELGATEWAY_"
SUBSCRIBER_NAME = "seldon-modelgateway"  # the reference's default subscriber and group component
MAX_WORKERS = 1_024
MAX_TIMEOUT_SECONDS = 3_600.0


@dataclass(frozen=True)
class ModelGatewayConfig(ServiceFlags):
    name: str = field(
        default="modelgateway",
        metadata=flag(
            "this replica's name, unique per replica: input partitions are hashed over the names "
            "(replicas sharing one are told apart by Kafka member id, less stably)"
        ),
    )
    workers: int = field(
        default=8,
        metadata=flag(
            "model calls in flight per consumer (env MODELGATEWAY_NUM_WORKERS in the reference)",
            parse=int_within(1, MAX_WORKERS),
        ),
    )
    max_consumers: int = field(
        default=100,
        metadata=flag("consumers (groups) models are hashed over", parse=int_within(1, MAX_CONSUMERS)),
    )
    request_timeout_seconds: float = field(
        default=120.0,
        metadata=flag("longest one model call may take", parse=seconds_up_to(MAX_TIMEOUT_SECONDS)),
    )
    topic_check_seconds: float = field(
        default=2.0,
        metadata=flag(
            "how often topics are checked and recreated (an in-memory broker restarted)",
            parse=seconds_up_to(MAX_TIMEOUT_SECONDS),
        ),
    )
    health_host: str = field(default="127.0.0.1", metadata=flag("address /ready and /metrics bind to"))
    health_port: int = field(
        default=9012, metadata=flag("/ready and /metrics; 0 picks a free port", parse=non_negative_int)
    )


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[ModelGatewayConfig, KafkaConfig]:
    """The gateway's settings and the Kafka config they name; a bad one ends with a usage error."""
    return service.parse_config(
        ModelGatewayConfig,
        argv,
        env,
        prog="python -m pipelines.modelgateway",
        description="meshserve model gateway: consumes model input topics, calls each model through "
        "Envoy, produces the answer to its output topic (or the error to the errors topic).",
        prefix=ENV_PREFIX,
        check=lambda config: validate_name(config.name, kind="model gateway"),
    )
