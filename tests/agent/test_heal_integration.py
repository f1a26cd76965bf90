"""The agent against a real MLServer: a model unloaded behind its back makes it re-subscribe truthfully."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.agent.agent_protos import load_op, model_version
from tests.agent.test_integration import Event, agent_config, post, running_agent

if TYPE_CHECKING:
    from tests.agent.conftest import FakeScheduler, MLServerProcess


async def test_lost_model_is_reported_by_a_new_subscription(
    fake_scheduler: tuple[FakeScheduler, int], mlserver: MLServerProcess, iris_model_dir: Path
) -> None:
    scheduler, port = fake_scheduler
    async with running_agent(agent_config(mlserver, port)) as task:
        await scheduler.next_subscription()
        iris = model_version("lost", 1, str(iris_model_dir), memory_bytes=100_000)
        scheduler.push(load_op(iris))
        event = await scheduler.next_event()
        assert Event.Name(event.event) == "LOADED"

        status, _ = await post(f"{mlserver.url}/v2/repository/models/lost_1/unload")
        assert status == 200
        again = await scheduler.next_subscription()
        assert list(again.loadedModels) == []  # the truth: MLServer no longer serves it
        assert again.availableMemoryBytes == 1_100_000
        assert not task.done()  # re-subscribing did not stop the agent
