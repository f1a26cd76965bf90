"""What the engine and the model gateway share (pipelines/service.py), and the engine's bound port."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from aiohttp import web

from apis.exits import FATAL_CONFIG
from apis.kafka import KafkaConfig, KafkaConfigError
from pipelines import service
from pipelines.engine.__main__ import _bound_port
from pipelines.engine.config import parse_config as engine_config


class FlakyClient:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise OSError("connection refused")


async def test_clients_start_in_order_once_the_broker_answers() -> None:
    admin, producer = FlakyClient(2), FlakyClient(0)
    await service.connect([admin, producer], KafkaConfig(("k:1",)), retry_seconds=0.0)
    assert (admin.starts, producer.starts) == (3, 1)


async def test_a_kafka_setting_failing_at_start_exits_fatal_config_and_a_signal_exits_0() -> None:
    async def bad() -> None:
        raise KafkaConfigError("sasl.password.file cannot be read")

    assert await service._until_signal(bad(), "model gateway") == FATAL_CONFIG

    async def forever() -> None:
        await asyncio.sleep(3_600)

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = asyncio.create_task(stop_soon())
    done = asyncio.create_task(service._until_signal(forever(), "model gateway"))
    assert await done == 0
    await stopper
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kafka-bootstrap=k:1", "--name=Bad_Name"], "dataflow engine name 'Bad_Name' is invalid"),
        (["--kafka-bootstrap=k:1", "--max-runs=0"], "--max-runs: 0 is not within 1..100000"),
        (["--kafka-bootstrap=k:1", "--tls-ca=/ca"], "TLS needs"),
        (["--kafka-bootstrap=k:1", "--log-level=loud"], "--log-level must be one of"),
    ],
)
def test_bad_engine_flags_end_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        engine_config(argv, {})
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_the_shared_flags_reach_both_processes() -> None:
    config, kafka = engine_config(["--kafka-bootstrap=k:1", "--scheduler-port=9100"], {})
    assert config.scheduler_address == "127.0.0.1:9100" and config.scheduler_tls is None
    assert kafka.bootstrap_servers == ("k:1",)


async def test_the_bound_port_is_the_one_the_site_listens_on() -> None:
    runner = web.AppRunner(web.Application(), handle_signals=False)
    await runner.setup()
    try:
        assert _bound_port(runner, 1234) == 1234  # no site yet: what was asked
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = _bound_port(runner, 0)
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # it listens there
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
