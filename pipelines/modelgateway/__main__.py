"""``python -m pipelines.modelgateway``: run the model gateway until SIGTERM/SIGINT.

Composition root: the Envoy client, the gateway (Kafka), the scheduler follower and the
``/ready`` + ``/metrics`` endpoint, in one event loop.
"""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import CollectorRegistry

from apis.kafka import KafkaConfig
from apis.metrics_server import MetricsServer
from pipelines import service
from pipelines.modelgateway.config import ModelGatewayConfig, parse_config
from pipelines.modelgateway.envoy import EnvoyClient
from pipelines.modelgateway.follow import SchedulerFollower
from pipelines.modelgateway.gateway import ModelGateway

log = structlog.get_logger("meshserve.pipelines.modelgateway")


async def run(config: ModelGatewayConfig, kafka: KafkaConfig) -> None:
    registry = CollectorRegistry()
    envoy = EnvoyClient(config.envoy_host, config.envoy_port, timeout=config.request_timeout_seconds)
    gateway = ModelGateway(config, kafka, envoy, registry)
    follower = SchedulerFollower(gateway, config.scheduler_address, config.scheduler_tls)
    health = MetricsServer(
        registry,
        host=config.health_host,
        port=config.health_port,
        ready=lambda: follower.synced and gateway.topics_ready,
    )
    try:
        async with health, asyncio.TaskGroup() as tasks:
            log.info(
                "model gateway started",
                name=config.name,
                kafka=",".join(kafka.bootstrap_servers),
                health_port=health.port,
            )
            tasks.create_task(gateway.keep())
            tasks.create_task(follower.run())
    finally:
        await envoy.close()


def main() -> None:
    config, kafka = parse_config()
    service.serve(run, config, kafka, what="model gateway")


if __name__ == "__main__":
    main()
