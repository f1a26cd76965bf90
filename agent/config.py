"""The agent process's settings: flags of ``python -m agent``, env ``MESHSERVE_AGENT_*``.

Derived from :class:`AgentConfig` by ``apis.settings`` (``--scheduler-port`` is
``MESHSERVE_AGENT_SCHEDULER_PORT``; a flag wins over the environment). The one other variable read
is MLServer's own ``MLSERVER_PARALLEL_WORKERS``, which the agent shares with its MLServer.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.artifacts import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, FetchPolicy
from agent.locks import DEFAULT_MAX_CONCURRENT
from agent.reload import DEFAULT_MAX_IN_FLIGHT
from apis import settings
from apis.logs import LEVELS
from apis.names import MLSERVER_CAPABILITIES
from apis.settings import NOT_A_FLAG, flag, non_negative_int, positive_float
from apis.tls import ClientTls, TlsSettingsError
from apis.validation import validate_capability, validate_name

ENV_PREFIX = "MESHSERVE_AGENT_"


def parse_capabilities(text: str) -> tuple[str, ...]:
    return tuple(validate_capability(tag) for tag in text.split(",") if tag.strip())


def parse_parallel_workers(text: str | None) -> int:
    # Same rule as the reference agent: unset or invalid means 1.
    try:
        workers = int(text or "")
    except ValueError:
        return 1
    return workers if workers >= 0 else 1


def _server_name(text: str) -> str:
    return validate_name(text, kind="server")


def _folder(text: str) -> Path:
    return Path(text).resolve()


def parse_folders(text: str) -> tuple[Path, ...]:
    """Comma-separated absolute folders (``--artifact-roots``); empty entries are skipped."""
    folders = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        if not Path(entry).is_absolute():
            raise ValueError(f"artifact root {entry!r} must be an absolute path")
        folders.append(Path(entry).resolve())
    return tuple(folders)


def parse_admin_urls(text: str) -> tuple[str, ...]:
    urls = tuple(part.strip() for part in text.split(",") if part.strip())
    for url in urls:
        if not url.startswith(("http://", "https://", "unix:/")):
            raise ValueError(f"Envoy admin URL {url!r} must start with http://, https:// or unix:/")
    return urls


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be above 0")
    return value


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Every setting of one agent (frozen); each field is a flag and an environment variable."""

    models_dir: Path = field(
        metadata=flag("MLServer's model repository root; the agent owns everything inside it", parse=_folder)
    )
    server_name: str = field(
        default="mlserver", metadata=flag("the server this replica belongs to", parse=_server_name)
    )
    replica_idx: int = field(default=0, metadata=flag("this replica's index", parse=non_negative_int))
    scheduler_host: str = field(default="127.0.0.1", metadata=flag("the scheduler's host"))
    scheduler_port: int = field(default=9005, metadata=flag("the scheduler's AgentService port"))
    inference_host: str = field(
        default="127.0.0.1",
        metadata=flag("where Envoy (and the agent) reach MLServer; sent as ReplicaConfig.inferenceSvc"),
    )
    inference_http_port: int = field(default=8080, metadata=flag("MLServer's HTTP port"))
    envoy_host: str = field(
        default="127.0.0.1",
        metadata=flag("where explainer and LLM models reach Envoy (their infer_uri, SELDON_ENVOY_HOST)"),
    )
    envoy_port: int = field(default=9000, metadata=flag("Envoy's data-plane port for that infer_uri"))
    inference_grpc_port: int = field(default=9500, metadata=flag("MLServer's gRPC port"))
    inference_metrics_port: int = field(
        default=8082, metadata=flag("MLServer's metrics port (its inference counters; docs/metrics.md)")
    )
    metrics_host: str = field(default="127.0.0.1", metadata=flag("address the agent's /metrics binds to"))
    metrics_port: int = field(
        default=9006,
        metadata=flag(
            "the agent's Prometheus /metrics (docs/metrics.md); 0 serves none", parse=non_negative_int
        ),
    )
    memory_bytes: int = field(
        default=1_000_000_000, metadata=flag("memory its models may use", parse=non_negative_int)
    )
    capabilities: tuple[str, ...] = field(
        default=MLSERVER_CAPABILITIES,
        metadata=flag("comma-separated runtimes this replica runs", parse=parse_capabilities),
    )
    overcommit_percentage: int = field(
        default=0, metadata=flag("memory overcommit allowed", parse=non_negative_int)
    )
    unload_grace_seconds: float = field(
        default=2.0, metadata=flag("pause before an unload so Envoy stops routing to the model first")
    )
    drain_timeout_seconds: float = field(
        default=90.0,
        metadata=flag(
            "on SIGTERM, how long to wait for the scheduler to move this replica's models elsewhere "
            "(AgentDrain) before exiting anyway; SIGINT exits at once",
            parse=positive_float,
        ),
    )
    max_concurrent_operations: int = field(
        default=DEFAULT_MAX_CONCURRENT,
        metadata=flag("loads and unloads run on MLServer at once (others wait)", parse=positive_int),
    )
    startup_timeout_seconds: float = field(
        default=120.0, metadata=flag("how long to wait for MLServer to be live", parse=positive_float)
    )
    artifact_roots: tuple[Path, ...] = field(
        default=(),
        metadata=flag(
            "comma-separated folders a local storageUri (a path or file://) may name; none by default, "
            "so only remote URIs load. /etc, /dev, /proc, /sys and --models-dir are refused anyway",
            parse=parse_folders,
        ),
    )
    artifact_max_bytes: int = field(
        default=DEFAULT_MAX_BYTES,
        metadata=flag("largest artifact a copy or rclone download may fetch, in bytes", parse=positive_int),
    )
    artifact_timeout_seconds: float = field(
        default=DEFAULT_TIMEOUT_S,
        metadata=flag("longest a copy or rclone download may take", parse=positive_float),
    )
    watch_interval_seconds: float = field(
        default=2.0,
        metadata=flag(
            "how often MLServer's health and model index are checked (lost models are reported)",
            parse=positive_float,
        ),
    )
    reload_host: str = field(
        default="127.0.0.1",
        metadata=flag("address the reload listener binds to (Envoy reaches it at --inference-host)"),
    )
    reload_http_port: int = field(
        default=9014,
        metadata=flag(
            "the reload listener's HTTP port: Envoy retries a request for an evicted model here "
            "(only with --overcommit-percentage above 0; 0: none)",
            parse=non_negative_int,
        ),
    )
    reload_grpc_port: int = field(
        default=9015, metadata=flag("the reload listener's gRPC port (0: none)", parse=non_negative_int)
    )
    reload_max_in_flight: int = field(
        default=DEFAULT_MAX_IN_FLIGHT,
        metadata=flag("requests the reload listener handles at once (others get 503)", parse=positive_int),
    )
    envoy_admin_urls: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "comma-separated admin URLs of every Envoy routing to this replica (http://host:port or "
            "unix:<path>): their per-model requests in flight keep a model from being evicted",
            parse=parse_admin_urls,
        ),
    )
    debug_host: str = field(default="127.0.0.1", metadata=flag("address the debug service binds to"))
    debug_port: int = field(
        default=7777,
        metadata=flag("AgentDebugService (ReplicaStatus) gRPC port; 0 serves none", parse=non_negative_int),
    )
    parallel_workers: int = field(default=1, metadata=NOT_A_FLAG)
    """MLServer's worker count, reported as runtime info on LOADED (env MLSERVER_PARALLEL_WORKERS)."""
    simulate: bool = field(
        default=False,
        metadata=flag(
            "no model server: acknowledge every load/unload at once; --inference-* name the upstream "
            "Envoy should route to (agent/simulate.py, for benchmarks)"
        ),
    )
    log_level: str = field(default="info", metadata=flag(f"one of {', '.join(LEVELS)}"))
    # Mutual TLS to the scheduler (docs/security.md): give all three files, or none for plain text.
    tls_ca: Path | None = field(
        default=None, metadata=flag("CA (PEM) the scheduler's certificate must chain to")
    )
    tls_cert: Path | None = field(default=None, metadata=flag("this agent's client certificate (PEM)"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))

    @property
    def reload_enabled(self) -> bool:
        """Evictions happen only with overcommit, and need the listener that reloads."""
        return self.overcommit_percentage > 0 and bool(self.reload_http_port and self.reload_grpc_port)

    @property
    def mlserver_grpc_address(self) -> str:
        return f"{self.inference_host}:{self.inference_grpc_port}"

    @property
    def scheduler_tls(self) -> ClientTls | None:
        return ClientTls.from_settings(self.tls_ca, self.tls_cert, self.tls_key)

    @property
    def scheduler_address(self) -> str:
        return f"{self.scheduler_host}:{self.scheduler_port}"

    @property
    def envoy_url(self) -> str:
        return f"http://{self.envoy_host}:{self.envoy_port}"

    @property
    def mlserver_url(self) -> str:
        return f"http://{self.inference_host}:{self.inference_http_port}"

    @property
    def mlserver_metrics_url(self) -> str:
        return f"http://{self.inference_host}:{self.inference_metrics_port}/metrics"

    @property
    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            roots=self.artifact_roots,
            models_dir=self.models_dir,
            max_bytes=self.artifact_max_bytes,
            timeout_s=self.artifact_timeout_seconds,
        )


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="meshserve agent: registers one MLServer replica with the scheduler and loads and "
        "unloads models on it. Every flag falls back to the environment variable shown.",
    )
    settings.add_flags(parser, AgentConfig, prefix=ENV_PREFIX, env=env)
    args = parser.parse_args(argv)
    if args.log_level not in LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LEVELS)}")
    if args.simulate and args.models_dir is None:
        args.models_dir = _folder(".")  # a simulated agent writes nothing
    if missing := settings.missing(AgentConfig, args):
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        ClientTls.from_settings(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsSettingsError as exc:
        parser.error(str(exc))
    workers = parse_parallel_workers(env.get("MLSERVER_PARALLEL_WORKERS"))
    return settings.build(AgentConfig, args, parallel_workers=workers)
