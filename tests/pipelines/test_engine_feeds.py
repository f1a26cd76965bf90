"""Stopping a pipeline's feed: a consumer slow to close (its group join still in progress) finishes
in the background after a bounded wait, so the engine's next update is not held up by it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from apis.kafka import KafkaConfig
from pipelines.engine import engine as engine_module
from pipelines.engine.engine import Engine

KAFKA = KafkaConfig.from_mapping({"bootstrap.servers": "127.0.0.1:9092"})


class Unloads:
    def __init__(self) -> None:
        self.unloaded: list[str] = []

    async def unload(self, name: str) -> None:
        self.unloaded.append(name)


def engine_with_feed(closing: asyncio.Event, release: asyncio.Event) -> tuple[Engine, Unloads]:
    runner = Unloads()
    engine = Engine(cast(Any, runner), KAFKA, cast(Any, None), engine="e", pending_seconds=1.0)

    async def feed() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # like a consumer's stop waiting for its JoinGroup answer
            closing.set()
            await release.wait()

    engine._feeds["p"] = asyncio.create_task(feed())
    return engine, runner


async def test_a_feed_slow_to_close_finishes_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "FEED_STOP_WAIT_SECONDS", 0.05)
    closing, release = asyncio.Event(), asyncio.Event()
    engine, runner = engine_with_feed(closing, release)
    await asyncio.sleep(0)
    await asyncio.wait_for(engine.stop("p", clean=False), timeout=5)
    assert closing.is_set() and runner.unloaded == ["p"]
    assert len(engine._stopping) == 1 and not engine._feeds
    release.set()
    await asyncio.wait_for(engine.close(), timeout=5)  # waits for the background close
    assert not engine._stopping


async def test_a_feed_that_closes_promptly_is_awaited() -> None:
    closing, release = asyncio.Event(), asyncio.Event()
    release.set()
    engine, runner = engine_with_feed(closing, release)
    await asyncio.sleep(0)
    await engine.stop("p", clean=False)
    assert closing.is_set() and not engine._stopping and runner.unloaded == ["p"]
    await engine.stop("unknown", clean=False)  # nothing running: nothing to wait for
    await engine.close()


async def test_a_feed_failing_as_it_closes_is_logged_not_raised(capsys: pytest.CaptureFixture[str]) -> None:
    runner = Unloads()
    engine = Engine(cast(Any, runner), KAFKA, cast(Any, None), engine="e", pending_seconds=1.0)

    async def feed() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("consumer close failed")

    engine._feeds["p"] = asyncio.create_task(feed())
    await asyncio.sleep(0)
    await engine.stop("p", clean=False)
    assert runner.unloaded == ["p"]
    assert "consumer close failed" in capsys.readouterr().out
