from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.unit.fakes import Harness


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    built = Harness()
    yield built
    await built.scheduler.close()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks running on the shared loop (the goleak of this suite)."""
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not leaked, f"tasks left running: {leaked}"
