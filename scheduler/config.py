"""The scheduler process's settings: flags of ``python -m scheduler``, env ``MESHSERVE_SCHEDULER_*``.

Derived from :class:`SchedulerConfig` by ``apis.settings`` (flag ``--xds-port`` is
``MESHSERVE_SCHEDULER_XDS_PORT``; a flag wins over the environment). The scheduler reads no other
environment variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from apis import settings
from apis.limits import (
    MAX_LAG_THRESHOLD,
    MAX_LOAD_REPORT_INTERVAL_S,
    MAX_SCALING_WINDOW_S,
    MIN_LOAD_REPORT_INTERVAL_S,
)
from apis.logs import LEVELS
from apis.settings import flag, int_within, non_negative_int, positive_float, seconds_up_to
from apis.tls import TlsSettingsError, server_files
from scheduler.autoscaling import Thresholds
from scheduler.pipeline_placement import MAX_REPLICAS as MAX_PIPELINE_REPLICAS
from scheduler.policies import DEFAULT_POLICY

ENV_PREFIX = "MESHSERVE_SCHEDULER_"
DEFAULT_LUA = Path(__file__).resolve().parent.parent / "envoy" / "seldon.lua"


def _load_report_interval(text: str) -> float:
    value = float(text)
    if not MIN_LOAD_REPORT_INTERVAL_S <= value <= MAX_LOAD_REPORT_INTERVAL_S:
        raise ValueError(
            f"{text!r} must be between {MIN_LOAD_REPORT_INTERVAL_S} and {MAX_LOAD_REPORT_INTERVAL_S} seconds"
        )
    return value


def _optional_path(text: str) -> Path | None:
    """An absolute path (the scheduler's and Envoy's working folders differ), or none for empty."""
    return Path(text).resolve() if text else None


# The autoscaling flags' parsers (``meshserve up`` passes the same flags through).
LAG_THRESHOLD = int_within(1, MAX_LAG_THRESHOLD)
SCALING_WINDOW = seconds_up_to(MAX_SCALING_WINDOW_S)


@dataclass(frozen=True)
class SchedulerConfig:
    """Every setting of the scheduler (frozen); each field is a flag and an environment variable."""

    host: str = field(default="127.0.0.1", metadata=flag("address the three gRPC servers bind to"))
    scheduler_port: int = field(default=9004, metadata=flag("Scheduler API (seldon.mlops.scheduler)"))
    agent_port: int = field(default=9005, metadata=flag("AgentService, which agents subscribe to"))
    xds_port: int = field(default=9002, metadata=flag("delta ADS, which Envoy connects to"))
    metrics_host: str = field(default="127.0.0.1", metadata=flag("address /metrics binds to"))
    metrics_port: int = field(
        default=9007,
        metadata=flag("Prometheus /metrics (docs/metrics.md); 0 serves none", parse=non_negative_int),
    )
    envoy_listen_address: str = field(default="127.0.0.1", metadata=flag("Envoy's data-plane address"))
    envoy_http_port: int = field(default=9000, metadata=flag("Envoy's data-plane port"))
    pipeline_gateway_host: str = field(
        default="127.0.0.1",
        metadata=flag("the pipeline gateway of engines that register none (they normally do; decision 0022)"),
    )
    pipeline_gateway_http_port: int = field(
        default=9010, metadata=flag("its HTTP port; 0: no pipeline routes", parse=non_negative_int)
    )
    pipeline_gateway_grpc_port: int = field(
        default=9011, metadata=flag("its gRPC port", parse=non_negative_int)
    )
    pipeline_engine_replicas: int = field(
        default=1,
        metadata=flag(
            "dataflow engines each pipeline runs on (consistent hashing; decision 0022)",
            parse=int_within(1, MAX_PIPELINE_REPLICAS),
        ),
    )
    lua_file: Path = field(default=DEFAULT_LUA, metadata=flag("Envoy's Lua filter (request glue)"))
    envoy_access_log: Path | None = field(
        default=None,
        metadata=flag(
            "file Envoy appends a JSON line to per data-plane request (docs/metrics.md); empty: none",
            parse=_optional_path,
        ),
    )
    agent_grace_seconds: float = field(
        default=15.0,
        metadata=flag(
            "how long a disconnected agent's models stay routed, waiting for it to reconnect",
            parse=positive_float,
        ),
    )
    operation_deadline_seconds: float = field(
        default=300.0,
        metadata=flag(
            "how long a LOAD or UNLOAD may go unanswered by its agent before it is sent again, "
            "then failed (model loading time included)",
            parse=positive_float,
        ),
    )
    load_report_interval_seconds: float = field(
        default=2.0,
        metadata=flag(
            "how often each Envoy reports requests in flight per model (load reporting, LRS)",
            parse=_load_report_interval,
        ),
    )
    enable_server_autoscaling: bool = field(
        default=True,
        metadata=flag(
            "ask the controller for server replicas (ScalingRequest) within a Server's "
            "minReplicas/maxReplicas when models need more, or replicas stay empty"
        ),
    )
    server_scale_down_grace_seconds: float = field(
        default=30.0,
        metadata=flag("how long a server replica holds no model before it is released", parse=positive_float),
    )
    server_packing_enabled: bool = field(
        default=False,
        metadata=flag("experimental: also release a replica when the models fit on fewer (they move)"),
    )
    min_envoys: int = field(default=1, metadata=flag("Envoys that must ACK a route", parse=non_negative_int))
    state_dir: Path | None = field(
        default=None,
        metadata=flag("where desired state is kept (SQLite); empty: keep nothing", parse=_optional_path),
    )
    placement_policy: str = field(
        default=DEFAULT_POLICY,
        metadata=flag("placement policy (entry-point group meshserve.placement; docs/placement-plugins.md)"),
    )
    # Model autoscaling on Envoy's load reports (docs/decisions/0016 compares the defaults with Seldon's).
    enable_model_autoscaling: bool = field(
        default=False,
        metadata=flag("scale models that set minReplicas or maxReplicas on their requests in flight"),
    )
    model_lag_threshold: int = field(
        default=30,
        metadata=flag(
            "requests in flight per replica that, held for --model-scale-up-seconds, add a replica",
            parse=LAG_THRESHOLD,
        ),
    )
    model_scale_up_seconds: float = field(
        default=20.0,
        metadata=flag("how long the lag must hold before a replica is added", parse=SCALING_WINDOW),
    )
    model_idle_seconds: float = field(
        default=600.0,
        metadata=flag("how long a model without requests keeps a replica", parse=SCALING_WINDOW),
    )
    model_scaling_cooldown_seconds: float = field(
        default=60.0,
        metadata=flag("no scaling of a model within this long of its last change", parse=SCALING_WINDOW),
    )
    log_level: str = field(default="info", metadata=flag(f"one of {', '.join(LEVELS)}"))
    # Mutual TLS on all three ports (docs/security.md): give all three files, or none for plain text.
    tls_cert: Path | None = field(default=None, metadata=flag("server certificate (PEM); with TLS on"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))
    tls_client_ca: Path | None = field(
        default=None,
        metadata=flag("CA (PEM) that signed every client's certificate; clients without one are refused"),
    )

    @property
    def autoscaling_thresholds(self) -> Thresholds:
        return Thresholds(
            in_flight_per_replica=self.model_lag_threshold,
            scale_up_window_s=self.model_scale_up_seconds,
            idle_window_s=self.model_idle_seconds,
            cooldown_s=self.model_scaling_cooldown_seconds,
        )


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> SchedulerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler",
        description="meshserve scheduler. Every flag falls back to the environment variable shown.",
    )
    settings.add_flags(parser, SchedulerConfig, prefix=ENV_PREFIX, env=os.environ if env is None else env)
    args = parser.parse_args(argv)
    if args.log_level not in LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LEVELS)}")
    try:
        server_files(args.tls_cert, args.tls_key, args.tls_client_ca)
    except TlsSettingsError as exc:
        parser.error(str(exc))
    return settings.build(SchedulerConfig, args)
