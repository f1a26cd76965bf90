"""Runs each scheduler operation in its own task, serialised per versioned model, at most
``max_concurrent`` of them loading or unloading at a time (both through agent/locks.py, which the
reload of an evicted model shares)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from structlog.typing import FilteringBoundLogger

from agent.locks import DEFAULT_MAX_CONCURRENT, ModelLocks
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

    Bounded: at most ``max_concurrent`` operations talk to MLServer at once (a burst of 1,000 LOADs
    does not start 1,000 downloads), and a model's entry (its last run; its lock in ``locks``) lives
    only while an operation for it is pending, so the maps hold the models in flight, not every
    model ever seen.
    """

    def __init__(
        self,
        *,
        operator: ModelOperations,
        report: Reporter,
        unload_grace_s: float,
        logger: FilteringBoundLogger,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        locks: ModelLocks | None = None,
    ) -> None:
        self._locks = locks if locks is not None else ModelLocks(max_concurrent)
        self._operator = operator
        self._report = report
        self._unload_grace_s = unload_grace_s
        self._log = logger
        self._sequence = itertools.count()
        self._models: dict[str, _Pending] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusing_loads = ""  # why loads are refused ("" while they are not)

    @property
    def tracked_models(self) -> int:
        """How many models have an entry now (those with an operation pending)."""
        return len(self._models)

    def refuse_loads(self, reason: str) -> None:
        """From now on every LOAD (queued or new) is answered LOAD_FAILED with ``reason``, unrun;
        unloads still run (a draining replica)."""
        self._refusing_loads = reason

    def submit(self, message: agent_pb2.ModelOperationMessage) -> None:
        if message.operation not in (Operation.LOAD_MODEL, Operation.UNLOAD_MODEL):
            self._log.warning("ignoring unknown operation", operation=message.operation)
            return
        name = versioned_name(message.modelVersion)
        pending = self._models.setdefault(name, _Pending())
        pending.operations += 1  # now, so an UNLOAD in its grace period keeps the entry alive
        task = asyncio.create_task(self._run(next(self._sequence), name, pending, message))
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

    async def _run(
        self, sequence: int, name: str, pending: _Pending, message: agent_pb2.ModelOperationMessage
    ) -> None:
        try:
            outcome = await self._run_in_turn(sequence, name, pending, message)
        finally:
            pending.operations -= 1
            if pending.operations == 0 and self._models.get(name) is pending:
                del self._models[name]
        if outcome is not None:
            await self._report(outcome)

    async def _run_in_turn(
        self, sequence: int, name: str, pending: _Pending, message: agent_pb2.ModelOperationMessage
    ) -> Outcome | None:
        model_version = message.modelVersion
        is_load = message.operation == Operation.LOAD_MODEL
        if not is_load:
            await asyncio.sleep(self._unload_grace_s)
        async with self._locks.hold(name):
            if sequence < pending.last_run:
                self._log.info("skipping stale operation", served_name=name, load=is_load)
                return None
            pending.last_run = sequence
            if is_load and self._refusing_loads:
                self._log.info("load refused", served_name=name, reason=self._refusing_loads)
                return Outcome(
                    model_version.model.meta.name,
                    model_version.version,
                    Event.LOAD_FAILED,
                    self._refusing_loads,
                )
            async with self._locks.slot():
                try:
                    if is_load:
                        return await self._operator.load(model_version)
                    return await self._operator.unload(model_version)
                except Exception as exc:  # noqa: BLE001 - logged below and reported as a failure
                    # A bug must still answer the scheduler, or the replica stays Loading/Unloading.
                    self._log.exception("operation crashed", served_name=name)
                    event = Event.LOAD_FAILED if is_load else Event.UNLOAD_FAILED
                    return Outcome(
                        model_version.model.meta.name, model_version.version, event, f"agent error: {exc}"
                    )


@dataclass
class _Pending:
    """A model with operations submitted and not finished: how many, and the last one run."""

    operations: int = 0
    last_run: int = -1
