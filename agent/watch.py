"""Watching the replica's MLServer: the agent notices a dead MLServer or a model it lost.

Every ``interval_s`` the watcher asks MLServer whether it is live (``/v2/health/live``) and whether
a few of the models it holds, in turn, are ready (``/v2/models/<name>/ready``). Only when one is
not does it read the whole repository index (``POST /v2/repository/index``) to learn everything
that was lost at once (a restarted MLServer lost them all). The index is not read on every check:
MLServer builds it by scanning and parsing every model's settings on disk inside its event loop,
which stalled inference for tens of milliseconds every check once a replica held a dozen models
(overcommit keeps evicted models' folders on disk). ``/v2/health/ready`` is not used: MLServer
answers it "not ready" while any one model loads or has failed, which says nothing about the
models that serve.

A model the agent holds that MLServer no longer serves READY (MLServer restarted, crashed, or the
model was unloaded behind the agent's back) is *lost*: the watcher drops it from the replica state
and calls ``on_lost``, which re-subscribes to the scheduler. The new Subscribe request lists only
what MLServer really serves (``loadedModels``), so the scheduler takes the replica out of those
models' routes and schedules them again - on this replica (a new LOAD, which waits for MLServer to
be back) or elsewhere. Models with a load or unload in progress are left to that operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from agent.errors import MLServerError
from agent.mlserver import MLServerClient, ModelState
from agent.operations import ModelOperator
from agent.state import ReplicaState

LostHandler = Callable[[list[str], str], None]

# A busy MLServer can miss a check (its event loop is serving inferences); dropping every model on
# one missed answer would turn load into an outage. It is declared down only after this many
# failed checks in a row; a restarted MLServer is caught by its index, which lacks the models.
DOWN_AFTER_FAILED_CHECKS = 3
# Models whose readiness one check asks about, in turn: a restart is seen at the first check; one
# model unloaded behind the agent's back within ceil(resident / this) checks.
READY_PROBES_PER_CHECK = 8


class MLServerWatcher:
    def __init__(
        self,
        *,
        mlserver: MLServerClient,
        state: ReplicaState,
        operator: ModelOperator,
        interval_s: float,
        on_lost: LostHandler,
        logger: FilteringBoundLogger,
    ) -> None:
        self._mlserver = mlserver
        self._state = state
        self._operator = operator
        self._interval_s = interval_s
        self._on_lost = on_lost
        self._log = logger
        self._failed_checks = 0
        self._probe_cursor = 0

    async def run(self) -> None:
        """Check every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug in one check must not stop the watching
                self._log.exception("MLServer check failed")

    async def check(self) -> list[str]:
        """One health and index check; returns the versioned names found lost (and reported)."""
        held = {name for name in self._held() if name not in self._operator.busy}
        serving, reason = await self._serving()
        ready = self._operator.mlserver_ready
        self._failed_checks = self._failed_checks + 1 if serving is None else 0
        if serving is None and self._failed_checks < DOWN_AFTER_FAILED_CHECKS:
            self._log.info("MLServer missed a check", reason=reason, failed_checks=self._failed_checks)
            return []
        if serving is None:
            if ready.is_set():
                self._log.warning("MLServer is down", reason=reason)
                ready.clear()
        elif not ready.is_set():
            self._log.info("MLServer is back")
            ready.set()
        # Re-read after the awaits: an operation may have started or finished meanwhile.
        lost = sorted(
            name
            for name in held
            if self._state.is_resident(name)
            and name not in self._operator.busy
            and name not in (serving or set())
        )
        if not lost:
            return []
        for name in lost:
            self._state.remove(name)
        self._log.warning("models lost on MLServer", served_names=lost, reason=reason)
        self._on_lost(lost, reason)
        return lost

    async def _probes_ready(self) -> bool:
        for name in self._next_probes():
            if not await self._mlserver.model_ready(name):
                return False
        return True

    def _next_probes(self) -> list[str]:
        held = sorted(name for name in self._held() if name not in self._operator.busy)
        if len(held) <= READY_PROBES_PER_CHECK:
            return held
        start = self._probe_cursor % len(held)
        self._probe_cursor = start + READY_PROBES_PER_CHECK
        return (held[start:] + held[:start])[:READY_PROBES_PER_CHECK]

    def _held(self) -> list[str]:
        # Evicted models are not on MLServer on purpose (agent/residency.py): not lost.
        return self._state.resident_names()

    async def _serving(self) -> tuple[set[str] | None, str]:
        """Names MLServer serves READY (all held ones, when the probed ones are), or None when it is
        down; and the reason a model is lost."""
        if not await self._mlserver.is_live():
            return None, "MLServer is not live"
        try:
            if await self._probes_ready():
                return set(self._held()), ""
        except MLServerError as exc:
            return None, f"MLServer's model readiness failed: {exc}"
        try:
            index = await self._mlserver.index(timeout_s=max(self._interval_s * 2, 5.0))
        except MLServerError as exc:
            return None, f"MLServer's repository index failed: {exc}"
        return {
            entry.name for entry in index if entry.state is ModelState.READY
        }, "MLServer no longer serves it"
