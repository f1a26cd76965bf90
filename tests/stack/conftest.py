"""Fixtures for the local stack's tests: a fake scheduler (the CLI's, a real grpc.aio server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cli.cli_fakes import FakeScheduler
from tests.leakcheck import no_leaked_tasks

__all__ = ["fake_scheduler", "no_leaked_tasks"]


@pytest.fixture
async def fake_scheduler() -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler()  # type: ignore[abstract]  # implements only what is called
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
