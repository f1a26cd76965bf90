from __future__ import annotations

import asyncio

import structlog

from agent.dispatcher import OperationDispatcher
from agent.operations import Event, Outcome
from apis.mlops.agent import agent_pb2
from tests.agent.agent_protos import load_op, model_version, unload_op


class FakeOperator:
    def __init__(self, *, delay_s: float = 0.0, crash: bool = False) -> None:
        self.calls: list[str] = []
        self._delay_s = delay_s
        self._crash = crash

    async def load(self, mv: agent_pb2.ModelVersion) -> Outcome:
        self.calls.append(f"load {mv.model.meta.name}_{mv.version}")
        await asyncio.sleep(self._delay_s)
        if self._crash:
            raise RuntimeError("boom")
        return Outcome(mv.model.meta.name, mv.version, Event.LOADED)

    async def unload(self, mv: agent_pb2.ModelVersion) -> Outcome:
        self.calls.append(f"unload {mv.model.meta.name}_{mv.version}")
        return Outcome(mv.model.meta.name, mv.version, Event.UNLOADED)


def make(operator: FakeOperator, grace_s: float = 0.0) -> tuple[OperationDispatcher, list[Outcome]]:
    reported: list[Outcome] = []

    async def report(outcome: Outcome) -> None:
        reported.append(outcome)

    dispatcher = OperationDispatcher(
        operator=operator, report=report, unload_grace_s=grace_s, logger=structlog.get_logger()
    )
    return dispatcher, reported


async def test_same_model_operations_run_in_order() -> None:
    operator = FakeOperator(delay_s=0.05)
    dispatcher, reported = make(operator)
    iris = model_version("iris", 1, "/x")
    dispatcher.submit(load_op(iris))
    dispatcher.submit(unload_op(iris))
    await dispatcher.wait_idle()
    assert operator.calls == ["load iris_1", "unload iris_1"]
    assert [outcome.event for outcome in reported] == [Event.LOADED, Event.UNLOADED]


async def test_unload_overtaken_during_grace_is_skipped() -> None:
    operator = FakeOperator()
    dispatcher, reported = make(operator, grace_s=0.2)
    iris = model_version("iris", 1, "/x")
    dispatcher.submit(unload_op(iris))
    dispatcher.submit(load_op(iris))
    await dispatcher.wait_idle()
    assert operator.calls == ["load iris_1"]
    assert [outcome.event for outcome in reported] == [Event.LOADED]


async def test_crash_is_reported_as_failure() -> None:
    dispatcher, reported = make(FakeOperator(crash=True))
    dispatcher.submit(load_op(model_version("iris", 1, "/x")))
    await dispatcher.wait_idle()
    assert reported[0].event == Event.LOAD_FAILED
    assert "boom" in reported[0].message


async def test_close_cancels_pending_operations() -> None:
    operator = FakeOperator()
    dispatcher, reported = make(operator, grace_s=60)
    dispatcher.submit(unload_op(model_version("iris", 1, "/x")))
    await asyncio.sleep(0)
    await dispatcher.close()
    assert operator.calls == []
    assert reported == []


class CountingOperator(FakeOperator):
    """Records how many operations run at once."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        self.running = 0
        self.most = 0

    async def load(self, mv: agent_pb2.ModelVersion) -> Outcome:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            return await super().load(mv)
        finally:
            self.running -= 1


async def test_concurrency_is_bounded_and_every_operation_still_runs() -> None:
    operator = CountingOperator(delay_s=0.02)
    reported: list[Outcome] = []

    async def report(outcome: Outcome) -> None:
        reported.append(outcome)

    dispatcher = OperationDispatcher(
        operator=operator, report=report, unload_grace_s=0, logger=structlog.get_logger(), max_concurrent=3
    )
    for i in range(30):
        dispatcher.submit(load_op(model_version(f"m{i}", 1, "file://x")))
    await dispatcher.wait_idle()
    assert operator.most == 3
    assert len(reported) == 30


async def test_model_entries_are_dropped_once_idle_and_staleness_still_holds() -> None:
    operator = FakeOperator()
    dispatcher, reported = make(operator, grace_s=0.05)
    for i in range(100):
        dispatcher.submit(load_op(model_version(f"m{i}", 1, "file://x")))
    await dispatcher.wait_idle()
    assert dispatcher.tracked_models == 0  # not one entry per model ever seen

    # An UNLOAD in its grace period keeps its model's entry, so a LOAD that overtakes it still wins.
    dispatcher.submit(unload_op(model_version("m0", 1, "file://x")))
    dispatcher.submit(load_op(model_version("m0", 1, "file://x")))
    assert dispatcher.tracked_models == 1
    await dispatcher.wait_idle()
    assert operator.calls[-1] == "load m0_1" and "unload m0_1" not in operator.calls
    assert dispatcher.tracked_models == 0
    assert len(reported) == 101


async def test_a_draining_replica_refuses_loads_but_still_unloads() -> None:
    operator = FakeOperator()
    dispatcher, reported = make(operator)
    dispatcher.refuse_loads("server replica is draining")
    dispatcher.submit(load_op(model_version("late", 1, "/x")))
    dispatcher.submit(unload_op(model_version("iris", 1, "/x")))
    await dispatcher.wait_idle()
    assert operator.calls == ["unload iris_1"]
    refused = next(o for o in reported if o.model_name == "late")
    assert (refused.event, refused.message) == (Event.LOAD_FAILED, "server replica is draining")
