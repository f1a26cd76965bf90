from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.leakcheck import no_leaked_tasks
from tests.scheduler.fakes import Harness

__all__ = ["no_leaked_tasks"]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    built = Harness()
    yield built
    await built.scheduler.close()
