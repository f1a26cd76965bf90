"""Fixtures for the CLI tests: a fake scheduler, and fake REST and gRPC inference servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cli.cli_fakes import FakeGrpcInference, FakeRestInference, FakeScheduler


@pytest.fixture
async def fake_scheduler() -> AsyncIterator[FakeScheduler]:
    fake = FakeScheduler()  # type: ignore[abstract]  # implements only what the CLI calls
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
    fake = FakeGrpcInference()  # type: ignore[abstract]  # implements only what the CLI calls
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
