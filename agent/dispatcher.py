"""Runs each scheduler operation in its own task, serialised per versioned model."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from structlog.typing import FilteringBoundLogger

from agent.operations import Event, ModelOperator, Outcome
from agent.state import versioned_name
from apis.mlops.agent import agent_pb2

Reporter = Callable[[Outcome], Awaitable[None]]
Operation = agent_pb2.ModelOperationMessage.Operation


class ModelOperations(Protocol):
    async def load(self, model_version: agent_pb2.ModelVersion) -> Outcome: ...

    async def unload(self, model_version: agent_pb2.ModelVersion) -> Outcome: ...


if TYPE_CHECKING:
    _: type[ModelOperations] = ModelOperator


class OperationDispatcher:
    """Owns the operation tasks.

    Operations on different models run concurrently; on the same versioned model they run one at a
    time. An UNLOAD first waits ``unload_grace_s`` (so Envoy stops routing to the model) *outside* the
    lock; an operation that was received before the last one already run for its model is stale and
    skipped - e.g. an UNLOAD overtaken by a LOAD of the same model during its grace period.
    """

    def __init__(
        self,
        *,
        operator: ModelOperations,
        report: Reporter,
        unload_grace_s: float,
        logger: FilteringBoundLogger,
    ) -> None:
        self._operator = operator
        self._report = report
        self._unload_grace_s = unload_grace_s
        self._log = logger
        self._sequence = itertools.count()
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_run: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, message: agent_pb2.ModelOperationMessage) -> None:
        if message.operation not in (Operation.LOAD_MODEL, Operation.UNLOAD_MODEL):
            self._log.warning("ignoring unknown operation", operation=message.operation)
            return
        task = asyncio.create_task(self._run(next(self._sequence), message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Wait for the operations submitted so far (used by tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, sequence: int, message: agent_pb2.ModelOperationMessage) -> None:
        model_version = message.modelVersion
        name = versioned_name(model_version)
        is_load = message.operation == Operation.LOAD_MODEL
        if not is_load:
            await asyncio.sleep(self._unload_grace_s)
        async with self._locks.setdefault(name, asyncio.Lock()):
            if sequence < self._last_run.get(name, -1):
                self._log.info("skipping stale operation", served_name=name, load=is_load)
                return
            self._last_run[name] = sequence
            try:
                if is_load:
                    outcome = await self._operator.load(model_version)
                else:
                    outcome = await self._operator.unload(model_version)
            except Exception as exc:  # noqa: BLE001 - logged below and reported as a failure
                # A bug must still answer the scheduler, or the replica stays Loading/Unloading.
                self._log.exception("operation crashed", served_name=name)
                event = Event.LOAD_FAILED if is_load else Event.UNLOAD_FAILED
                outcome = Outcome(
                    model_version.model.meta.name, model_version.version, event, f"agent error: {exc}"
                )
        await self._report(outcome)
