"""``python -m pipelines.engine``: the dataflow engine and pipeline gateway, until SIGTERM/SIGINT.

Composition root: the Envoy client, the Kafka producer/admin and topic writer, the runner, the
Chainer and status followers, the HTTP and gRPC gateway servers and the ``/ready`` + ``/metrics``
endpoint, in one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable

import grpc
import structlog
from aiohttp import web
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from apis.exits import FATAL_CONFIG
from apis.kafka import KafkaConfig, KafkaConfigError
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.logs import configure_logging
from apis.metrics_server import MetricsServer
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from pipelines import kafka_clients
from pipelines.engine.audit import TopicWriter
from pipelines.engine.config import EngineConfig, parse_config
from pipelines.engine.control import ChainerFollower, StatusFollower
from pipelines.engine.engine import Engine
from pipelines.engine.gateway import Gateway
from pipelines.engine.grpc_api import PipelineInference
from pipelines.engine.http_api import Metrics, application
from pipelines.engine.models import EnvoyModels
from pipelines.engine.runner import Runner

log = structlog.get_logger("meshserve.pipelines.engine")
KAFKA_RETRY_SECONDS = 2.0


async def run(config: EngineConfig, kafka: KafkaConfig) -> None:
    registry = CollectorRegistry()
    models = EnvoyModels(
        config.envoy_host,
        config.envoy_port,
        timeout=config.run_timeout_seconds,
        connections=config.model_connections,
    )
    writer = TopicWriter(kafka.topics, config.name, registry)
    runner = Runner(models, writer, max_runs=config.max_runs, run_timeout=config.run_timeout_seconds)
    producer = kafka_clients.producer(kafka)
    admin = kafka_clients.admin(kafka)
    engine = Engine(runner, kafka, admin, engine=config.name, pending_seconds=config.join_pending_seconds)
    tls = config.scheduler_tls
    chainer = ChainerFollower(config.name, config.scheduler_address, tls, engine.start, engine.stop)
    status = StatusFollower(config.name, config.scheduler_address, tls)
    gateway = Gateway(runner, status, max_deadline=config.request_timeout_seconds)
    metrics = Metrics(registry)
    http = web.AppRunner(application(gateway, metrics), access_log=None, handle_signals=False)
    grpc_server = grpc.aio.server(options=[GRPC_RECEIVE_LIMIT])
    inference = PipelineInference(gateway, metrics)  # type: ignore[abstract]
    v2_dataplane_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, grpc_server)
    grpc_port = grpc_server.add_insecure_port(f"{config.host}:{config.grpc_port}")
    health = MetricsServer(
        registry, host=config.host, port=config.health_port, ready=lambda: chainer.connected
    )
    try:
        await _connect(admin, producer, kafka)
        await http.setup()
        site = web.TCPSite(http, config.host, config.http_port)
        await site.start()
        await grpc_server.start()
        http_port = _bound_port(site, config.http_port)
        chainer.register_gateway(config.advertise_host or config.host, http_port, grpc_port)
        async with health, asyncio.TaskGroup() as tasks:
            log.info(
                "dataflow engine started",
                engine=config.name,
                http_port=http_port,
                grpc_port=grpc_port,
                health_port=health.port,
            )
            tasks.create_task(writer.run(producer))
            tasks.create_task(engine.keep(producer))
            tasks.create_task(status.run())
            tasks.create_task(chainer.run())
    finally:
        await grpc_server.stop(1)
        await http.cleanup()
        await engine.close()
        await runner.close()
        await writer.drain(2.0)
        await kafka_clients.close_quietly(producer, admin)
        await models.close()


def _bound_port(site: web.TCPSite, asked: int) -> int:
    """The port a site listens on (``asked`` may be 0: any free one)."""
    server = site._server  # aiohttp keeps the asyncio server private
    sockets = getattr(server, "sockets", None) or ()
    for sock in sockets:
        return int(sock.getsockname()[1])
    return asked


async def _connect(admin: object, producer: object, kafka: KafkaConfig) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient

    assert isinstance(admin, AIOKafkaAdminClient) and isinstance(producer, AIOKafkaProducer)
    while True:
        try:
            await admin.start()
            await producer.start()
            return
        except (KafkaError, OSError) as error:
            log.warning("Kafka not reachable yet", error=repr(error), bootstrap=kafka.bootstrap_servers)
            await asyncio.sleep(KAFKA_RETRY_SECONDS)


async def _main(config: EngineConfig, kafka: KafkaConfig) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await run(config, kafka)
    except asyncio.CancelledError:
        log.info("dataflow engine stopped")
    except KafkaConfigError as error:
        log.error("dataflow engine cannot start", error=str(error))
        return FATAL_CONFIG
    return 0


def main() -> None:
    config, kafka = parse_config()
    configure_logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        sys.exit(runner.run(_main(config, kafka)))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (its transports cost less per request), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
