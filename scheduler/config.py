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
from apis.limits import MAX_LOAD_REPORT_INTERVAL_S, MIN_LOAD_REPORT_INTERVAL_S
from apis.logs import LEVELS
from apis.settings import flag, non_negative_int, positive_float
from apis.tls import TlsSettingsError, server_files
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


def _state_dir(text: str) -> Path | None:
    return Path(text).resolve() if text else None


@dataclass(frozen=True)
class SchedulerConfig:
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
    lua_file: Path = field(default=DEFAULT_LUA, metadata=flag("Envoy's Lua filter (request glue)"))
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
    min_envoys: int = field(default=1, metadata=flag("Envoys that must ACK a route", parse=non_negative_int))
    state_dir: Path | None = field(
        default=None,
        metadata=flag("where desired state is kept (SQLite); empty: keep nothing", parse=_state_dir),
    )
    placement_policy: str = field(
        default=DEFAULT_POLICY,
        metadata=flag("placement policy (entry-point group meshserve.placement; docs/placement-plugins.md)"),
    )
    log_level: str = field(default="info", metadata=flag(f"one of {', '.join(LEVELS)}"))
    # Mutual TLS on all three ports (docs/security.md): give all three files, or none for plain text.
    tls_cert: Path | None = field(default=None, metadata=flag("server certificate (PEM); with TLS on"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))
    tls_client_ca: Path | None = field(
        default=None,
        metadata=flag("CA (PEM) that signed every client's certificate; clients without one are refused"),
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
