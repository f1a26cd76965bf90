"""The agent's MLServer watcher: lost models leave the replica state and trigger a re-subscription."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

import structlog

from agent.errors import MLServerError
from agent.mlserver import MLServerClient, ModelState, RepositoryModel
from agent.operations import Event, ModelOperator
from agent.repository import LocalRepository
from agent.state import ReplicaState
from agent.watch import DOWN_AFTER_FAILED_CHECKS, READY_PROBES_PER_CHECK, MLServerWatcher
from tests.agent.agent_protos import model_version


class FakeMLServer:
    """What the watcher asks MLServer: liveness, a model's readiness and the repository index."""

    def __init__(self) -> None:
        self.live = True
        self.ready: set[str] = set()
        self.probed: list[str] = []
        self.indexed = 0

    async def is_live(self) -> bool:
        return self.live

    async def model_ready(self, name: str) -> bool:
        self.probed.append(name)
        return name in self.ready

    async def index(self, *, timeout_s: float = 0) -> list[RepositoryModel]:
        self.indexed += 1
        return [RepositoryModel(name, "", ModelState.READY) for name in sorted(self.ready)]


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.mlserver = FakeMLServer()
        self.state = ReplicaState(memory_bytes=1000, overcommit_percentage=0)
        self.operator = ModelOperator(
            mlserver=cast(MLServerClient, self.mlserver),
            repository=LocalRepository(tmp_path / "models"),
            state=self.state,
            logger=structlog.get_logger(),
            ready_timeout_s=5,
        )
        self.reported: list[tuple[list[str], str]] = []
        self.watcher = MLServerWatcher(
            mlserver=cast(MLServerClient, self.mlserver),
            state=self.state,
            operator=self.operator,
            interval_s=0.01,
            on_lost=lambda lost, reason: self.reported.append((lost, reason)),
            logger=structlog.get_logger(),
        )

    def hold(self, *names: str) -> None:
        for name in names:
            model, version = name.rsplit("_", 1)
            self.state.add(model_version(model, int(version), "gs://x"))
            self.mlserver.ready.add(name)


async def test_nothing_lost_nothing_reported(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.hold("iris_1", "wine_2")
    assert await setup.watcher.check() == []
    assert setup.reported == []
    # The index scans every model's settings on disk inside MLServer's loop: not read when the
    # probed models answer ready.
    assert setup.mlserver.indexed == 0 and setup.mlserver.probed == ["iris_1", "wine_2"]


async def test_many_models_are_probed_a_few_at_a_time_in_turn(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    names = [f"m{n:02d}_1" for n in range(READY_PROBES_PER_CHECK * 2 + 1)]
    setup.hold(*names)
    for _ in range(3):
        assert await setup.watcher.check() == []
    assert len(setup.mlserver.probed) == 3 * READY_PROBES_PER_CHECK
    assert set(setup.mlserver.probed) == set(names)  # every held model probed within three checks
    setup.mlserver.ready.discard(names[-1])
    for _ in range(3):
        if await setup.watcher.check():
            break
    assert setup.reported == [([names[-1]], "MLServer no longer serves it")]
    assert setup.mlserver.indexed == 1


async def test_a_failed_readiness_probe_counts_as_a_missed_check(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.hold("iris_1")

    async def unreachable(name: str) -> bool:
        raise MLServerError("connection reset")

    setup.mlserver.model_ready = unreachable  # type: ignore[method-assign]
    assert await setup.watcher.check() == []
    assert setup.operator.mlserver_ready.is_set() and "iris_1" in setup.state


async def test_model_unloaded_behind_the_agents_back_is_lost(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.hold("iris_1", "wine_2")
    setup.mlserver.ready.discard("iris_1")
    assert await setup.watcher.check() == ["iris_1"]
    assert setup.reported == [(["iris_1"], "MLServer no longer serves it")]
    assert "iris_1" not in setup.state and "wine_2" in setup.state
    assert setup.operator.mlserver_ready.is_set()


async def test_dead_mlserver_loses_everything_and_holds_loads_until_it_is_back(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    await setup.operator._repository.claim()
    setup.hold("iris_1", "wine_2")
    setup.mlserver.live = False
    for _ in range(DOWN_AFTER_FAILED_CHECKS - 1):
        assert await setup.watcher.check() == []  # a busy MLServer may miss a check or two
        assert setup.operator.mlserver_ready.is_set()
    assert await setup.watcher.check() == ["iris_1", "wine_2"]
    assert setup.reported[-1][1] == "MLServer is not live"
    assert not setup.operator.mlserver_ready.is_set()
    assert setup.state.loaded_models() == []
    # A LOAD the scheduler sends meanwhile waits for MLServer instead of failing at once.
    load = asyncio.create_task(setup.operator.load(model_version("iris", 1, "file:///etc")))
    await asyncio.sleep(0.05)
    assert not load.done()
    setup.mlserver.live = True
    setup.mlserver.ready.clear()  # a restarted MLServer serves nothing
    assert await setup.watcher.check() == []
    assert setup.operator.mlserver_ready.is_set()
    outcome = await asyncio.wait_for(load, 5)
    assert outcome.event == Event.LOAD_FAILED  # it ran (and this artifact is refused)


async def test_models_with_an_operation_in_progress_are_left_alone(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.hold("iris_1")
    setup.mlserver.ready.clear()
    setup.operator.busy.add("iris_1")  # e.g. being unloaded right now
    assert await setup.watcher.check() == []
    assert "iris_1" in setup.state


async def test_run_checks_every_interval(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.hold("iris_1")
    task = asyncio.create_task(setup.watcher.run())
    try:
        setup.mlserver.ready.clear()
        async with asyncio.timeout(2):
            while not setup.reported:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert setup.reported[0][0] == ["iris_1"]


async def test_a_missed_check_then_an_answer_loses_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    await setup.operator._repository.claim()
    setup.hold("iris_1")
    setup.mlserver.live = False
    assert await setup.watcher.check() == []
    setup.mlserver.live = True
    assert await setup.watcher.check() == []
    setup.mlserver.live = False
    assert await setup.watcher.check() == []  # the count starts again after an answer
    assert [m.model.meta.name for m in setup.state.loaded_models()] == ["iris"]
