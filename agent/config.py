"""Agent configuration: command-line flags with environment fallbacks (flags win)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from apis.names import DEFAULT_CAPABILITIES
from apis.validation import validate_capability, validate_name


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
    simulate: bool = False
    """No model server: acknowledge every load/unload at once (agent/simulate.py, for benchmarks)."""

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
        workers = int(text or "")
    except ValueError:
        return 1
    return workers if workers >= 0 else 1


def _build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="meshserve agent: registers one MLServer replica with the scheduler and loads and "
        "unloads models on it. Every flag falls back to the environment variable shown.",
    )

    def add(flag: str, default: str, kind: type = str, doc: str = "") -> None:
        variable = "MESHSERVE_" + flag.removeprefix("--").replace("-", "_").upper()
        text = f"{doc} [{variable}, default {default}]".strip()
        parser.add_argument(flag, type=kind, default=kind(env.get(variable, default)), help=text)

    add("--server-name", "mlserver")
    add("--replica-idx", "0", int)
    add("--scheduler-host", "127.0.0.1")
    add("--scheduler-port", "9005", int, "the scheduler's AgentService port")
    add("--inference-host", "127.0.0.1", doc="where Envoy reaches MLServer (ReplicaConfig.inferenceSvc)")
    add("--inference-http-port", "8080", int, "MLServer's HTTP port")
    add("--inference-grpc-port", "9500", int, "MLServer's gRPC port")
    add("--memory-bytes", "1000000000", int)
    add("--capabilities", DEFAULT_CAPABILITIES, doc="comma-separated")
    add("--overcommit-percentage", "0", int)
    add("--unload-grace-seconds", "2.0", float, "pause before unloading so Envoy drains")
    add("--startup-timeout-seconds", "120", float, "how long to wait for MLServer to be live")
    add("--log-level", "info")
    parser.add_argument(
        "--models-dir",
        default=env.get("MESHSERVE_MODELS_DIR"),
        help="MLServer's model repository root, owned by the agent (required) [MESHSERVE_MODELS_DIR]",
    )
    parser.add_argument(
        "--simulate",
        action="store_true",
        default=env.get("MESHSERVE_SIMULATE", "") not in ("", "0", "false"),
        help="no model server: acknowledge loads/unloads at once; --inference-* name the upstream "
        "Envoy should route to (benchmarks) [MESHSERVE_SIMULATE]",
    )
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
    if args.models_dir is None and not args.simulate:
        parser.error("the following arguments are required: --models-dir")
    config = AgentConfig(
        server_name=validate_name(args.server_name, kind="server"),
        replica_idx=args.replica_idx,
        models_dir=Path(args.models_dir or ".").resolve(),
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
        simulate=args.simulate,
    )
    return config, str(args.log_level)
