"""``python -m pipelines.modelgateway``: run the model gateway until SIGTERM/SIGINT.

Composition root: the Envoy client, the gateway (Kafka), the scheduler follower and the
``/ready`` + ``/metrics`` endpoint, in one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import structlog
from prometheus_client import CollectorRegistry

from apis.exits import FATAL_CONFIG
from apis.kafka import KafkaConfig, KafkaConfigError
from apis.logs import configure_logging
from apis.metrics_server import MetricsServer
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
                "model gateway started", kafka=",".join(kafka.bootstrap_servers), health_port=health.port
            )
            tasks.create_task(gateway.keep())
            tasks.create_task(follower.run())
    finally:
        await envoy.close()


async def _main(config: ModelGatewayConfig, kafka: KafkaConfig) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await run(config, kafka)
    except asyncio.CancelledError:
        log.info("model gateway stopped")
    except KafkaConfigError as error:  # e.g. the SASL password file cannot be read
        log.error("model gateway cannot start", error=str(error))
        return FATAL_CONFIG
    return 0


def main() -> None:
    config, kafka = parse_config()
    configure_logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(_main(config, kafka)))


if __name__ == "__main__":
    main()
