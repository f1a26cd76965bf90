"""An autouse fixture that fails a test leaving tasks running (the goleak of this suite).

Unit-level packages re-export it from their ``conftest.py``; the e2e suites share session-scoped
stacks whose tasks legitimately outlive one test, so they do not use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

# As goleak retries before it reports: a stopped grpc.aio server cancels its RPC handlers' tasks,
# and they end a few loop turns later (a CI run caught one still pending after a single turn).
SETTLE_S, SETTLE_STEP_S = 1.0, 0.01


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    leaked = _running()
    for _ in range(int(SETTLE_S / SETTLE_STEP_S)):
        if not leaked:
            break
        await asyncio.sleep(SETTLE_STEP_S)
        leaked = _running()
    assert not leaked, f"tasks left running {SETTLE_S:g} s after the test: {leaked}"


def _running() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
