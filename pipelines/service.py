"""What the pipeline processes (dataflow engine, model gateway) share: flags, parsing, the run loop.

Both are a ``KafkaFlags`` process that follows the scheduler (optionally over mTLS) and calls
models through Envoy; :class:`ServiceFlags` holds those flags, :func:`parse_config` turns argv and
the environment into the config and the Kafka config it names (a bad value is a usage error, exit
2), :func:`connect` starts Kafka clients once the broker answers, and :func:`serve` runs the
process until SIGTERM/SIGINT (exit 0) or until its Kafka settings fail at start (exit
``FATAL_CONFIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import structlog
from aiokafka.errors import KafkaError

from apis import runtime, settings
from apis.exits import FATAL_CONFIG
from apis.kafka import KafkaConfig, KafkaConfigError
from apis.kafka_flags import KafkaFlags
from apis.logs import LEVELS, configure_logging
from apis.settings import flag
from apis.tls import ClientTls

log = structlog.get_logger("meshserve.pipelines")


@dataclass(frozen=True)
class ServiceFlags(KafkaFlags):
    scheduler_host: str = field(default="127.0.0.1", metadata=flag("the scheduler's host"))
    scheduler_port: int = field(default=9004, metadata=flag("the Scheduler API port"))
    envoy_host: str = field(
        default="127.0.0.1", metadata=flag("Envoy's data-plane host (models are called there)")
    )
    envoy_port: int = field(default=9000, metadata=flag("Envoy's data-plane port"))
    log_level: str = field(default="info", metadata=flag(f"one of {', '.join(LEVELS)}"))
    tls_ca: Path | None = field(default=None, metadata=flag("CA (PEM) the scheduler's certificate chains to"))
    tls_cert: Path | None = field(default=None, metadata=flag("client certificate (PEM) for the scheduler"))
    tls_key: Path | None = field(default=None, metadata=flag("its private key (PEM)"))

    @property
    def scheduler_address(self) -> str:
        return f"{self.scheduler_host}:{self.scheduler_port}"

    @property
    def scheduler_tls(self) -> ClientTls | None:
        return ClientTls.from_settings(self.tls_ca, self.tls_cert, self.tls_key)


Config = TypeVar("Config", bound=ServiceFlags)


def parse_config(
    cls: type[Config],
    argv: Sequence[str] | None,
    env: Mapping[str, str] | None,
    *,
    prog: str,
    description: str,
    prefix: str,
    check: Callable[[Config], object] = lambda config: None,
) -> tuple[Config, KafkaConfig]:
    """The settings and the Kafka config they name; ``check`` raises ValueError on a bad one."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog=prog, description=description + " Every flag falls back to the environment variable shown."
    )
    settings.add_flags(parser, cls, prefix=prefix, env=env)
    args = parser.parse_args(argv)
    if args.log_level not in LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LEVELS)}")
    config = settings.build(cls, args)
    try:
        check(config)
        config.scheduler_tls  # noqa: B018 - checks the three files are given together
        kafka = config.kafka_settings()
    except ValueError as exc:  # TlsSettingsError, KafkaConfigError, InvalidResource, ...
        parser.error(str(exc))
    return config, kafka


class _Client(Protocol):
    async def start(self) -> None: ...


async def connect(clients: Sequence[_Client], kafka: KafkaConfig, retry_seconds: float) -> None:
    """Start ``clients`` in order, retried until the broker answers."""
    while True:
        try:
            for client in clients:
                await client.start()
            return
        except (KafkaError, OSError) as error:
            log.warning("Kafka not reachable yet", error=repr(error), bootstrap=kafka.bootstrap_servers)
            await asyncio.sleep(retry_seconds)


def serve(
    run: Callable[[Config, KafkaConfig], Awaitable[None]],
    config: Config,
    kafka: KafkaConfig,
    *,
    what: str,
    fast_loop: bool = False,
) -> None:
    """Run ``run(config, kafka)`` until SIGTERM/SIGINT, then exit; ``fast_loop``: apis.runtime's
    loop (uvloop, fewer collections)."""
    configure_logging(config.log_level)
    running = _until_signal(run(config, kafka), what)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(runtime.run(running) if fast_loop else asyncio.run(running))


async def _until_signal(running: Awaitable[None], what: str) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await running
    except asyncio.CancelledError:
        log.info(f"{what} stopped")
    except KafkaConfigError as error:  # e.g. the SASL password file cannot be read
        log.error(f"{what} cannot start", error=str(error))
        return FATAL_CONFIG
    return 0
