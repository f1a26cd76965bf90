"""Scenario 43: model autoscaling is off unless asked for.

The same stack, model, server and load as ``test_autoscaling.py``'s scale-up, with the same short
windows and threshold, but without ``--enable-model-autoscaling``: a model declaring
``minReplicas: 1, maxReplicas: 3`` on a server with room for three keeps its one replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, running_stack, stack_config
from tests.e2e.test_autoscaling import (
    CLIENTS,
    MODEL,
    THRESHOLD,
    ServerShape,
    autoscaled_model,
    declare_server,
    replicas,
    slow_artifact,
)
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import traffic

pytestmark = pytest.mark.timeout(300)
WINDOW_S = 2.0


@pytest.fixture(scope="module")
async def stack_without_autoscaling(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(
        tmp_path_factory.mktemp("no-autoscaling"),
        model_lag_threshold=THRESHOLD,
        model_scale_up_seconds=WINDOW_S,
        model_idle_seconds=4.0,
        model_scaling_cooldown_seconds=WINDOW_S,
    )
    assert not config.enable_model_autoscaling  # the default
    async with running_stack(config) as stack:
        yield stack


async def test_sustained_lag_changes_nothing_while_autoscaling_is_off(
    stack_without_autoscaling: Stack, tmp_path: Path
) -> None:
    stack = stack_without_autoscaling
    await declare_server(stack, tmp_path, ServerShape(3))
    await load(stack, autoscaled_model(slow_artifact(tmp_path)))
    try:
        await stack.wait_state(MODEL, "ModelAvailable", timeout=90)
        async with traffic(stack, [MODEL], rate_per_stream=None, clients_per_stream=CLIENTS) as calls:
            for _ in range(int(5 * WINDOW_S)):  # several scale-up windows and cooldowns of lag
                await asyncio.sleep(1)
                assert await replicas(stack) == (1, 1, 1)
        assert calls.failed == 0, calls.failures[:5]
        assert calls.ok > 2 * CLIENTS * 10  # the lag was there: 2 x CLIENTS in flight on one replica
    finally:
        await unload(stack, MODEL)
        await stack.wait_gone(MODEL, timeout=60)
