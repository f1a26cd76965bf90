"""Fixtures for the CLI tests: a fake scheduler, and fake REST and gRPC inference servers."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# The repository is not installed into the virtualenv; make ``cli`` and ``apis`` importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from cli_fakes import FakeGrpcInference, FakeRestInference, FakeScheduler  # noqa: E402


@pytest.fixture
async def fake_scheduler() -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def fake_rest() -> AsyncIterator[FakeRestInference]:
    fake = FakeRestInference()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def fake_grpc() -> AsyncIterator[FakeGrpcInference]:
    fake = FakeGrpcInference()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
