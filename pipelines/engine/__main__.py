"""``python -m pipelines.engine``: the dataflow engine and pipeline gateway, until SIGTERM/SIGINT.

Composition root: the Envoy client, the Kafka producer/admin and topic writer, the runner, the
Chainer and status followers, the HTTP and gRPC gateway servers and the ``/ready`` + ``/metrics``
endpoint, in one event loop.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from apis.kafka import KafkaConfig
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.metrics_server import MetricsServer
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from pipelines import kafka_clients, service
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
        await service.connect([admin, producer], kafka, KAFKA_RETRY_SECONDS)
        await http.setup()
        site = web.TCPSite(http, config.host, config.http_port)
        await site.start()
        await grpc_server.start()
        http_port = _bound_port(http, config.http_port)
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


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    """The port the runner's one site listens on (``asked`` may be 0: any free one)."""
    for address in runner.addresses:  # (host, port[, flow, scope]) per listening socket
        return int(address[1])
    return asked


def main() -> None:
    config, kafka = parse_config()
    service.serve(run, config, kafka, what="dataflow engine", fast_loop=True)


if __name__ == "__main__":
    main()
