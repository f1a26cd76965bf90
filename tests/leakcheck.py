"""An autouse fixture that fails a test leaving tasks running (the goleak of this suite).

Unit-level packages re-export it from their ``conftest.py``; the e2e suites share session-scoped
stacks whose tasks legitimately outlive one test, so they do not use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not leaked, f"tasks left running: {leaked}"
