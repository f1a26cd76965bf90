"""Settings of the local stack: where state lives and which loopback ports each process uses.

``meshserve up``'s flags derive from :class:`StackConfig` (``apis.settings``): ``--http-port`` is
``MESHSERVE_STACK_HTTP_PORT``. The state folder is ``--home`` / ``MESHSERVE_HOME``, shared by every
command that addresses the stack (``up``, ``down``, ``status``, ``server load``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apis.kafka import KafkaConfig
from apis.kafka_flags import KafkaFlags, load_file
from apis.limits import MAX_LAG_THRESHOLD, MAX_SCALING_WINDOW_S
from apis.logs import LEVELS
from apis.names import DEFAULT_CAPABILITIES
from apis.quantity import parse_memory
from apis.settings import NOT_A_FLAG, flag, int_within, non_negative_int, positive_float, seconds_up_to
from apis.tls import ClientTls
from apis.validation import MAX_OVERCOMMIT_PERCENTAGE, parse_overcommit_percent
from stack.tls import StackTls

ENV_PREFIX = "MESHSERVE_STACK_"
HOME_ENV = "MESHSERVE_HOME"
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
MAX_SOCKET_PATH = 100
LAG_THRESHOLD = int_within(1, MAX_LAG_THRESHOLD)
SCALING_WINDOW = seconds_up_to(MAX_SCALING_WINDOW_S)


def port_defaults() -> dict[str, int]:
    """Every ``*_port`` setting and its default: the single list ``meshserve up`` exposes as flags."""
    return {f.name: f.default for f in dataclasses.fields(StackConfig) if f.name.endswith("_port")}  # type: ignore[misc]


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV, ".meshserve")).resolve()


@dataclass(frozen=True)
class StackConfig(KafkaFlags):
    """Every setting of the local stack (frozen): its home folder, each process's loopback ports,
    Kafka, TLS and the default server; the fields with metadata are ``meshserve up``'s flags."""

    home: Path = field(default_factory=default_home, metadata=NOT_A_FLAG)
    host: str = field(default="127.0.0.1", metadata=NOT_A_FLAG)  # the local stack binds to loopback only
    http_port: int = field(default=9000, metadata=flag("Envoy's data plane"))
    xds_port: int = field(default=9002, metadata=flag("the scheduler's xDS"))
    scheduler_port: int = field(default=9004, metadata=flag("the Scheduler API"))
    agent_port: int = field(default=9005, metadata=flag("the scheduler's AgentService"))
    envoy_admin_port: int = field(default=9901, metadata=flag("Envoy's admin"))
    mlserver_http_port: int = field(default=8080, metadata=flag("the first MLServer's HTTP"))
    mlserver_grpc_port: int = field(default=9500, metadata=flag("the first MLServer's gRPC"))
    mlserver_metrics_port: int = field(default=8082, metadata=flag("the first MLServer's metrics"))
    agent_metrics_port: int = field(default=9006, metadata=flag("the first agent's Prometheus /metrics"))
    scheduler_metrics_port: int = field(default=9007, metadata=flag("the scheduler's Prometheus /metrics"))
    server_name: str = field(default="mlserver", metadata=flag("the server the stack starts"))
    capabilities: str = field(default=DEFAULT_CAPABILITIES, metadata=flag("its comma-separated runtimes"))
    server_memory: int = field(
        default=2_000_000_000,
        metadata=flag(
            "memory per replica of the default server, a Kubernetes quantity (2Gi, 500M); a Server "
            "resource's replicas take theirs from its podSpec",
            parse=parse_memory,
        ),
    )
    overcommit_percent: int = field(
        default=10,
        metadata=flag(
            f"memory overcommit per replica, 0 to {MAX_OVERCOMMIT_PERCENTAGE} percent (Seldon's "
            "SELDON_OVERCOMMIT_PERCENTAGE)",
            parse=parse_overcommit_percent,
        ),
    )
    artifact_roots: str = field(
        default="",
        metadata=flag(
            "comma-separated folders local storageUris may name, beside the project's samples/ and "
            "the stack's home (each agent's --artifact-roots)"
        ),
    )
    agent_grace_seconds: float = field(
        default=15.0, metadata=flag("how long a disconnected agent stays routed", parse=positive_float)
    )
    # The scheduler's model autoscaling (its flags of the same names; docs/decisions/0016).
    enable_model_autoscaling: bool = field(
        default=False, metadata=flag("scale models that set minReplicas or maxReplicas on their load")
    )
    model_lag_threshold: int = field(
        default=30, metadata=flag("requests in flight per replica that add one", parse=LAG_THRESHOLD)
    )
    model_scale_up_seconds: float = field(
        default=20.0, metadata=flag("how long that lag must hold", parse=SCALING_WINDOW)
    )
    model_idle_seconds: float = field(
        default=600.0, metadata=flag("how long an idle model keeps a replica", parse=SCALING_WINDOW)
    )
    model_scaling_cooldown_seconds: float = field(
        default=60.0,
        metadata=flag("no scaling within this long of a model's last change", parse=SCALING_WINDOW),
    )
    server_scale_down_grace_seconds: float = field(
        default=30.0,
        metadata=flag(
            "how long a replica of an autoscaled Server holds no model before it is released",
            parse=positive_float,
        ),
    )
    envoy_access_log: bool = field(
        default=False,
        metadata=flag("Envoy appends a JSON line per data-plane request to logs/envoy-access.log"),
    )
    log_level: str = field(default="info", metadata=flag(f"the supervisor's; one of {', '.join(LEVELS)}"))
    restart_limit: int = field(
        default=5,
        metadata=flag(
            "restarts of a crashing process before the supervisor gives up on it (shown by `meshserve "
            "status`); a run of --healthy-seconds starts the count afresh",
            parse=non_negative_int,
        ),
    )
    healthy_seconds: float = field(
        default=30.0,
        metadata=flag(
            "how long a process must run to reset its restart count and backoff", parse=positive_float
        ),
    )
    kafka: bool = field(
        default=True,
        metadata=flag(
            "Kafka for pipelines: the model gateway, and the embedded broker (Tansu) unless "
            "--kafka-bootstrap or --kafka-config names a cluster"
        ),
    )
    kafka_port: int = field(default=9092, metadata=flag("the embedded Kafka broker (Tansu)"))
    modelgateway_port: int = field(default=9012, metadata=flag("the model gateway's /ready and /metrics"))
    pipeline_http_port: int = field(
        default=9010, metadata=flag("the pipeline gateway (dataflow engine), HTTP")
    )
    pipeline_grpc_port: int = field(
        default=9011, metadata=flag("the pipeline gateway (dataflow engine), gRPC")
    )
    engine_port: int = field(default=9013, metadata=flag("the dataflow engine's /ready and /metrics"))
    tls: bool = field(
        default=False,
        metadata=flag(
            "mutual TLS on the scheduler's ports (API, AgentService, xDS; Envoy's xDS client included) and "
            "Envoy's admin on a unix socket (mode 0600); a local CA and certificates in $MESHSERVE_HOME/tls "
            "(docs/security.md)"
        ),
    )

    @property
    def kafka_embedded(self) -> bool:
        """Kafka is on and no existing cluster is named: the stack runs its own broker."""
        if not self.kafka or self.kafka_bootstrap:
            return False
        return not (self.kafka_config and "bootstrap.servers" in load_file(Path(self.kafka_config)))

    def kafka_settings_for_stack(self) -> KafkaConfig:
        """The one Kafka config every component of the stack gets (raises KafkaConfigError)."""
        return self.kafka_settings(bootstrap=f"{self.host}:{self.kafka_port}")

    @property
    def kafka_file(self) -> Path:
        """Where the stack writes that config for its components (the reference's kafka.json)."""
        return self.home / "kafka.json"

    @property
    def tls_files(self) -> StackTls:
        """Where ``--tls`` keeps the CA, the scheduler's certificate and each client's (stack/tls.py)."""
        return StackTls(self.home / "tls")

    def client_tls(self, name: str) -> ClientTls | None:
        """The credentials client ``name`` (agent, envoy, cli, controller) presents; None without TLS."""
        return self.tls_files.client(name) if self.tls else None

    @property
    def envoy_admin_socket(self) -> Path | None:
        """With ``--tls``, Envoy's admin listens here (mode 0600, in a 0700 folder) instead of on a port."""
        if not self.tls:
            return None
        path = self.home / "admin" / "envoy.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        # sun_path holds ~107 bytes; a deep home gets a private folder of its own under /tmp.
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"meshserve-{os.getuid()}-{digest}" / "envoy.sock"

    @property
    def autoscaling_flags(self) -> list[str]:
        """The scheduler's autoscaling flags: its thresholds always (inert while autoscaling is off, so
        a stack run with it off under the same settings shows what the flag alone changes)."""
        return [
            *(["--enable-model-autoscaling"] if self.enable_model_autoscaling else []),
            f"--model-lag-threshold={self.model_lag_threshold}",
            f"--model-scale-up-seconds={self.model_scale_up_seconds}",
            f"--model-idle-seconds={self.model_idle_seconds}",
            f"--model-scaling-cooldown-seconds={self.model_scaling_cooldown_seconds}",
        ]

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def agent_artifact_roots(self) -> str:
        """What each agent of the stack may read local artifacts from."""
        extra = [part.strip() for part in self.artifact_roots.split(",") if part.strip()]
        return ",".join([str(SAMPLES_DIR), str(self.home), *(str(Path(p).resolve()) for p in extra)])

    @property
    def python(self) -> str:
        return sys.executable

    def binary(self, name: str) -> str:
        """A console script of this environment (envoy, mlserver), else from PATH."""
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.exists() else shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} is not installed (run `make up`, which installs it)")
        return found

    def ports(self) -> frozenset[int]:
        """Every port this config names (``*_port`` settings)."""
        return frozenset(getattr(self, name) for name in port_defaults())

    @classmethod
    def on_free_ports(cls, home: Path, **overrides: Any) -> StackConfig:
        """A stack on loopback ports free right now (tests and benchmarks run beside other stacks)."""
        from stack.ports import free_ports

        settings = port_defaults()
        values: dict[str, Any] = dict(zip(settings, free_ports(len(settings)), strict=True))
        # Twice the agent's reconnect backoff cap (agent/backoff.py, 5 s): an agent reconnecting after
        # a scheduler restart is never late for its grace period.
        values["agent_grace_seconds"] = 10.0
        # Kafka only where a test or benchmark asks for it: the others need no broker and gateway.
        values["kafka"] = False
        return cls(home=home, **{**values, **overrides})

    @property
    def config_file(self) -> Path:
        return self.home / "config.json"

    def save(self) -> None:
        """Written by ``up`` so the detached supervisor, ``status`` and ``down`` see the same ports."""
        values: dict[str, Any] = dataclasses.asdict(self)
        values["home"] = str(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(values, indent=2))

    @classmethod
    def load(cls, home: Path) -> StackConfig:
        try:
            saved = json.loads((home / "config.json").read_text())
        except FileNotFoundError:
            return cls(home=home)
        # Settings another meshserve version saved are left out rather than refused.
        values = {f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved}
        values["home"] = Path(saved["home"])
        return cls(**values)
