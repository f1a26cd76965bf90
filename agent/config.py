"""Agent configuration: command-line flags with environment fallbacks (flags win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.validation import validate_capability, validate_name

DEFAULT_CAPABILITIES = "mlserver,sklearn,xgboost,lightgbm,python"


@dataclass(frozen=True, slots=True)
class AgentConfig:
    server_name: str
    replica_idx: int
    models_dir: Path
    """MLServer's model repository root; the agent owns everything inside it."""
    scheduler_host: str = "127.0.0.1"
    scheduler_port: int = 9005
    inference_host: str = "127.0.0.1"
    """Where Envoy (and the agent) reach MLServer; sent as ReplicaConfig.inferenceSvc."""
    inference_http_port: int = 8080
    inference_grpc_port: int = 9500
    memory_bytes: int = 1_000_000_000
    capabilities: tuple[str, ...] = tuple(DEFAULT_CAPABILITIES.split(","))
    overcommit_percentage: int = 0
    unload_grace_seconds: float = 2.0
    """Pause before an unload so Envoy stops routing to the model first."""
    startup_timeout_seconds: float = 120.0
    parallel_workers: int = 1
    """MLServer's worker count, reported as runtime info on LOADED (env MLSERVER_PARALLEL_WORKERS)."""

    @property
    def scheduler_address(self) -> str:
        return f"{self.scheduler_host}:{self.scheduler_port}"

    @property
    def mlserver_url(self) -> str:
        return f"http://{self.inference_host}:{self.inference_http_port}"


def parse_capabilities(text: str) -> tuple[str, ...]:
    return tuple(validate_capability(tag) for tag in text.split(",") if tag.strip())


def parse_parallel_workers(text: str | None) -> int:
    # Same rule as the reference agent: unset or invalid means 1.
    try:
        return int(text) if text is not None and int(text) >= 0 else 1
    except ValueError:
        return 1


def _build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def env_or(name: str, default: str) -> str:
        return env.get(f"MESHSERVE_{name}", default)

    parser = argparse.ArgumentParser(prog="python -m agent", description=__doc__)
    add = parser.add_argument
    add("--server-name", default=env_or("SERVER_NAME", "mlserver"), help="[MESHSERVE_SERVER_NAME]")
    add("--replica-idx", type=int, default=int(env_or("REPLICA_IDX", "0")), help="[MESHSERVE_REPLICA_IDX]")
    add("--scheduler-host", default=env_or("SCHEDULER_HOST", "127.0.0.1"), help="[MESHSERVE_SCHEDULER_HOST]")
    add("--scheduler-port", type=int, default=int(env_or("SCHEDULER_PORT", "9005")))
    add("--inference-host", default=env_or("INFERENCE_HOST", "127.0.0.1"), help="MLServer's address")
    add("--inference-http-port", type=int, default=int(env_or("INFERENCE_HTTP_PORT", "8080")))
    add("--inference-grpc-port", type=int, default=int(env_or("INFERENCE_GRPC_PORT", "9500")))
    add("--memory-bytes", type=int, default=int(env_or("MEMORY_BYTES", "1000000000")))
    add("--capabilities", default=env_or("CAPABILITIES", DEFAULT_CAPABILITIES), help="comma-separated")
    add("--overcommit-percentage", type=int, default=int(env_or("OVERCOMMIT_PERCENTAGE", "0")))
    add(
        "--models-dir",
        default=env.get("MESHSERVE_MODELS_DIR"),
        required="MESHSERVE_MODELS_DIR" not in env,
        help="MLServer's model repository root [MESHSERVE_MODELS_DIR]",
    )
    add("--unload-grace-seconds", type=float, default=float(env_or("UNLOAD_GRACE_SECONDS", "2.0")))
    add("--startup-timeout-seconds", type=float, default=float(env_or("STARTUP_TIMEOUT_SECONDS", "120")))
    add("--log-level", default=env_or("LOG_LEVEL", "info"))
    return parser


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[AgentConfig, str]:
    """Return the agent configuration and the log level."""
    env = os.environ if env is None else env
    parser = _build_parser(env)
    args = parser.parse_args(argv)
    if args.replica_idx < 0 or args.memory_bytes < 0 or args.overcommit_percentage < 0:
        parser.error("--replica-idx, --memory-bytes and --overcommit-percentage must not be negative")
    config = AgentConfig(
        server_name=validate_name(args.server_name, kind="server"),
        replica_idx=args.replica_idx,
        models_dir=Path(args.models_dir).resolve(),
        scheduler_host=args.scheduler_host,
        scheduler_port=args.scheduler_port,
        inference_host=args.inference_host,
        inference_http_port=args.inference_http_port,
        inference_grpc_port=args.inference_grpc_port,
        memory_bytes=args.memory_bytes,
        capabilities=parse_capabilities(args.capabilities),
        overcommit_percentage=args.overcommit_percentage,
        unload_grace_seconds=args.unload_grace_seconds,
        startup_timeout_seconds=args.startup_timeout_seconds,
        parallel_workers=parse_parallel_workers(env.get("MLSERVER_PARALLEL_WORKERS")),
    )
    return config, str(args.log_level)
