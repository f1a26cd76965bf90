"""Loading and unloading one model version on MLServer, and adopting what survived an agent restart.

Transport-free: results are ``Outcome`` values; the gRPC client turns them into ModelEventMessages.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from agent.errors import AgentError
from agent.locks import ModelLocks
from agent.mlserver import MLServerClient, ModelState
from agent.repository import STAGING, LocalRepository
from agent.residency import Residency
from agent.state import ReplicaState, model_cost, versioned_name
from apis.mlops.agent import agent_pb2
from apis.validation import InvalidResource, validate_name

Event = agent_pb2.ModelEventMessage.Event


@dataclass(frozen=True, slots=True)
class Outcome:
    model_name: str
    version: int
    event: agent_pb2.ModelEventMessage.Event.ValueType
    message: str = ""


class ModelOperator:
    """Does the work of LOAD/UNLOAD; callers serialise operations on the same versioned model
    (``locks``, shared with eviction and reload: agent/residency.py).

    ``keep_evicted``: the replica reloads evicted models on demand (overcommit with a reload
    listener), so after a restart a model on disk that MLServer no longer serves is adopted as
    evicted rather than deleted.
    """

    def __init__(
        self,
        *,
        mlserver: MLServerClient,
        repository: LocalRepository,
        state: ReplicaState,
        logger: FilteringBoundLogger,
        ready_timeout_s: float = 120.0,
        locks: ModelLocks | None = None,
        keep_evicted: bool = False,
    ) -> None:
        self._mlserver = mlserver
        self._repository = repository
        self._state = state
        self._log = logger
        self._ready_timeout_s = ready_timeout_s
        # Set while MLServer answers (the watcher clears it): loads wait for it instead of failing.
        self.mlserver_ready = asyncio.Event()
        self.mlserver_ready.set()
        # Versioned names with a load, unload, eviction or reload in progress: the watcher leaves
        # them alone and eviction does not pick them.
        self.busy: set[str] = set()
        self.locks = locks if locks is not None else ModelLocks()
        self.keep_evicted = keep_evicted
        self.residency = Residency(
            mlserver=mlserver, state=state, locks=self.locks, busy=self.busy, logger=logger
        )

    async def load(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        name, version = model_version.model.meta.name, model_version.version
        started = time.monotonic()
        try:
            validate_name(name)
        except InvalidResource as exc:
            return Outcome(name, version, Event.LOAD_FAILED, str(exc))
        served = versioned_name(model_version)
        if served in self._state:
            # A repeated LOAD (e.g. after a scheduler restart) must not cause downtime.
            self._log.info("model already loaded", model=name, version=version)
            return Outcome(name, version, Event.LOADED)
        self.busy.add(served)
        try:
            return await self._load(model_version, served, started)
        finally:
            self.busy.discard(served)

    async def _load(self, model_version: agent_pb2.ModelVersion, served: str, started: float) -> Outcome:
        name, version = model_version.model.meta.name, model_version.version
        if not self.mlserver_ready.is_set():
            # MLServer is restarting: the scheduler re-sent this load; run it once MLServer is back.
            self._log.info("load waits for MLServer", model=name, version=version)
            try:
                async with asyncio.timeout(self._ready_timeout_s):
                    await self.mlserver_ready.wait()
            except TimeoutError:
                message = f"MLServer was not ready within {self._ready_timeout_s:g}s"
                return Outcome(name, version, Event.LOAD_FAILED, message)
        try:
            await self._repository.prepare(model_version)
            async with self.residency.room_for(served, model_cost(model_version)):
                await self._mlserver.load(served)
                await self._repository.save_marker(model_version)
                # Resident before the reservation goes, so no other load counts these bytes free.
                self._state.add(model_version)
        except AgentError as exc:
            await self._repository.remove(served)
            self._log.warning(
                "model load failed", model=name, version=version, error=str(exc), duration_s=_since(started)
            )
            return Outcome(name, version, Event.LOAD_FAILED, str(exc))
        self._log.info("model loaded", model=name, version=version, duration_s=_since(started))
        return Outcome(name, version, Event.LOADED)

    async def unload(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        name, version = model_version.model.meta.name, model_version.version
        started = time.monotonic()
        try:
            validate_name(name)
        except InvalidResource as exc:
            return Outcome(name, version, Event.UNLOAD_FAILED, str(exc))
        served = versioned_name(model_version)
        self.busy.add(served)
        try:
            return await self._unload(model_version, served, started)
        finally:
            self.busy.discard(served)

    async def _unload(self, model_version: agent_pb2.ModelVersion, served: str, started: float) -> Outcome:
        name, version = model_version.model.meta.name, model_version.version
        try:
            if served not in self._state or self._state.is_resident(served):  # evicted: not on MLServer
                await self._mlserver.unload(served)
        except AgentError as exc:
            self._log.warning(
                "model unload failed", model=name, version=version, error=str(exc), duration_s=_since(started)
            )
            return Outcome(name, version, Event.UNLOAD_FAILED, str(exc))
        await self._repository.remove(served)
        self._state.remove(served)
        self._log.info("model unloaded", model=name, version=version, duration_s=_since(started))
        return Outcome(name, version, Event.UNLOADED)

    async def adopt_or_clean(self) -> None:
        """Rebuild state after a restart: keep READY models this agent loaded, remove everything else.

        Adopted models stay loaded (no downtime); with ``keep_evicted``, a model this agent loaded
        that MLServer no longer serves (evicted) is adopted as evicted, its artifact kept. Anything
        else is unloaded and its folder deleted so the scheduler's view and the repository start
        out identical. The models dir is claimed first: nothing is deleted from a folder that is
        not the agent's own (``NotOwned``).
        """
        await self._repository.claim()
        adopted: set[str] = set()
        for entry in await self._mlserver.index():
            if entry.state is ModelState.READY:
                model_version = await self._repository.read_marker(entry.name)
                if model_version is not None:
                    self._state.add(model_version)
                    adopted.add(entry.name)
                    self._log.info(
                        "model adopted", model=model_version.model.meta.name, version=model_version.version
                    )
                    continue
            if entry.state in (ModelState.READY, ModelState.LOADING):
                await self._mlserver.unload(entry.name)
                self._log.info("stray model unloaded", served_name=entry.name)
        for folder in await self._repository.folders():
            if folder not in adopted and not await self._adopt_evicted(folder):
                await self._repository.remove_entry(folder)
                if folder != STAGING:
                    self._log.info("stray model folder removed", folder=folder)

    async def _adopt_evicted(self, folder: str) -> bool:
        if not self.keep_evicted or folder == STAGING:
            return False
        model_version = await self._repository.read_marker(folder)
        if model_version is None:
            return False
        self._state.add(model_version, resident=False)
        self._log.info(
            "model adopted as evicted", model=model_version.model.meta.name, version=model_version.version
        )
        return True


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
