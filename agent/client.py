"""The control loop: subscribe to the scheduler's AgentService, run its operations, report events.

Operations arrive several per stream message where the scheduler allows it (``SubscribeBatched``:
gRPC's per-message cost dominates the control plane); a scheduler without it (Seldon, an older
meshserve) answers UNIMPLEMENTED and the client uses ``Subscribe``. Events go out one
acknowledged ``AgentEvent`` call each, in the order they happened, and are retried until the
scheduler has them: an acknowledgement is worth more than the cheaper event stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from structlog.typing import FilteringBoundLogger

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.dispatcher import OperationDispatcher
from agent.events import AckedEventStream, NotAcknowledged
from agent.locks import ModelLocks
from agent.operations import Event, ModelOperator, Outcome
from agent.state import ReplicaState
from agent.state import versioned_name as versioned_name_of
from apis.mlops.agent import agent_pb2, agent_pb2_grpc

DRAINING = "server replica is draining"
# Undelivered events kept for retry; beyond this the oldest go (a re-subscription covers them).
MAX_PENDING_EVENTS = 10_000
EVENT_TIMEOUT_S = 30.0


class AgentClient:
    """One replica's connection to the scheduler.

    ``run`` re-subscribes forever (exponential back-off) and returns only when cancelled. The gRPC
    channel is owned by the caller; operations outlive a broken stream and report on the same channel.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        channel: grpc.aio.Channel,
        operator: ModelOperator,
        state: ReplicaState,
        logger: FilteringBoundLogger,
        locks: ModelLocks | None = None,
    ) -> None:
        self._config = config
        self._stub = agent_pb2_grpc.AgentServiceStub(channel)
        self._state = state
        self._log = logger.bind(server=config.server_name, replica=config.replica_idx)
        self._call: grpc.aio.UnaryStreamCall[Any, Any] | None = None
        self._resubscribing = False
        self._dispatcher = OperationDispatcher(
            operator=operator,
            report=self.report,
            unload_grace_s=config.unload_grace_seconds,
            logger=self._log,
            max_concurrent=config.max_concurrent_operations,
            locks=locks,
        )
        self._batched = True  # until SubscribeBatched is answered UNIMPLEMENTED
        self._pending: list[agent_pb2.ModelEventMessage] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        # Until the scheduler answers AgentEventsAcked with UNIMPLEMENTED; then AgentEvent calls.
        self._events: AckedEventStream | None = AckedEventStream(self._stub, EVENT_TIMEOUT_S)

    async def run(self) -> None:
        backoff = Backoff()
        try:
            while True:
                started = time.monotonic()
                received = await self._subscribe_once()
                # A stream that worked for a while is not a failing scheduler: start back-off afresh.
                if received or time.monotonic() - started > 5.0:
                    backoff.reset()
                delay = 0.0 if self._resubscribing else backoff.next_delay()
                self._resubscribing = False
                self._log.info("re-subscribing", delay_s=round(delay, 3))
                await asyncio.sleep(delay)
        finally:
            await self._dispatcher.close()
            if self._sender is not None:
                self._sender.cancel()
            if self._events is not None:
                self._events.close()

    async def _subscribe_once(self) -> int:
        """Run one Subscribe stream to its end; returns how many operations it delivered."""
        request = self.subscribe_request()
        batched = self._batched
        call = self._stub.SubscribeBatched(request) if batched else self._stub.Subscribe(request)
        self._call = call
        received = 0
        try:
            self._log.info(
                "subscribing",
                scheduler=self._config.scheduler_address,
                loaded_models=len(request.loadedModels),
                available_memory_bytes=request.availableMemoryBytes,
            )
            async for message in call:
                operations = (
                    message.operations if isinstance(message, agent_pb2.ModelOperationBatch) else [message]
                )
                for operation in operations:
                    received += 1
                    self._dispatcher.submit(operation)
            self._log.warning("scheduler closed the stream")
        except grpc.aio.AioRpcError as exc:
            if batched and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._batched = False
                self._log.info("scheduler has no SubscribeBatched; using Subscribe")
                return await self._subscribe_once()
            if not (self._resubscribing and exc.code() == grpc.StatusCode.CANCELLED):
                self._log.warning("subscription failed", code=exc.code().name, details=exc.details())
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError from a call cancelled locally: that is resubscribe(),
            # unless this task itself is being cancelled (the agent stopping).
            task = asyncio.current_task()
            if not self._resubscribing or (task is not None and task.cancelling()):
                raise
        finally:
            call.cancel()
            self._call = None
        return received

    async def drain(self, deadline_s: float) -> bool:
        """Refuse new loads and ask the scheduler to move this replica's models elsewhere
        (AgentDrain); returns whether it did within ``deadline_s``.

        The scheduler unloads each model here (over the still-open Subscribe stream) once it runs
        elsewhere and Envoy routes there (make before break), so a drained MLServer is empty. A
        model that could not move by the deadline is left loaded (and the scheduler keeps routing to
        it for its grace period): stopping it would fail its requests for nothing.
        """
        self._dispatcher.refuse_loads(DRAINING)
        request = agent_pb2.AgentDrainRequest(
            serverName=self._config.server_name, replicaIdx=self._config.replica_idx
        )
        self._log.info("draining: asking the scheduler to move this replica's models", deadline_s=deadline_s)
        try:
            await self._stub.AgentDrain(request, timeout=deadline_s, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            left = [versioned_name_of(m) for m in self._state.loaded_models()]
            self._log.warning("drain not completed", code=exc.code().name, details=exc.details(), left=left)
            return False
        self._log.info("drained: every model runs elsewhere")
        return True

    def resubscribe(self, reason: str) -> None:
        """End the current Subscribe stream and open a new one at once, with fresh loadedModels.

        How the agent tells the scheduler it lost models (agent/watch.py): the scheduler reconciles
        the replica against what the new request lists, as after any reconnect.
        """
        self._log.info("re-subscribing to report the replica's models", reason=reason)
        self._resubscribing = True
        if self._call is not None:
            self._call.cancel()

    def subscribe_request(self) -> agent_pb2.AgentSubscribeRequest:
        config = self._config
        return agent_pb2.AgentSubscribeRequest(
            serverName=config.server_name,
            shared=True,
            replicaIdx=config.replica_idx,
            replicaConfig=agent_pb2.ReplicaConfig(
                inferenceSvc=config.inference_host,
                inferenceHttpPort=config.inference_http_port,
                inferenceGrpcPort=config.inference_grpc_port,
                memoryBytes=config.memory_bytes,
                capabilities=list(config.capabilities),
                overCommitPercentage=config.overcommit_percentage,
                reloadHttpPort=config.reload_http_port if config.reload_enabled else 0,
                reloadGrpcPort=config.reload_grpc_port if config.reload_enabled else 0,
            ),
            loadedModels=self._state.loaded_models(),
            availableMemoryBytes=self._state.available_bytes(),
        )

    async def report(self, outcome: Outcome) -> None:
        """Send ``outcome`` with the other events of this loop turn; returns once it is sent (on the
        event stream: handed to gRPC; per call: answered) or failed (logged, not retried)."""
        message = agent_pb2.ModelEventMessage(
            serverName=self._config.server_name,
            replicaIdx=self._config.replica_idx,
            modelName=outcome.model_name,
            modelVersion=outcome.version,
            event=outcome.event,
            message=outcome.message,
            availableMemoryBytes=self._state.available_bytes(),
        )
        if outcome.event == Event.LOADED:
            message.runtimeInfo.mlserver.parallelWorkers = self._config.parallel_workers
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        done = self._pending_done
        self._pending.append(message)
        if self._sender is None:
            # A task: it first runs after every report of this loop turn has queued its event.
            self._sender = asyncio.create_task(self._send_pending())
        # Shielded: a cancelled operation must not cancel the delivery its batch-mates wait for.
        await asyncio.shield(done)

    async def _send_pending(self) -> None:
        """Send queued events, one batch in flight at a time, until none are left.

        Events the scheduler did not take are queued again (oldest first, at most
        MAX_PENDING_EVENTS) and retried with backoff until delivered; their reporters are not
        held back meanwhile.
        """
        backoff = Backoff()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                done, self._pending_done = self._pending_done, None
                try:
                    undelivered = await self._deliver(batch)
                finally:
                    if done is not None and not done.done():
                        done.set_result(None)
                if not undelivered:
                    backoff.reset()
                    continue
                self._requeue(undelivered)
                await asyncio.sleep(backoff.next_delay())
        finally:
            self._sender = None

    def _requeue(self, undelivered: list[agent_pb2.ModelEventMessage]) -> None:
        self._pending[:0] = undelivered
        overflow = len(self._pending) - MAX_PENDING_EVENTS
        if overflow > 0:
            # A scheduler away this long gets the truth from the next subscription's loadedModels.
            del self._pending[:overflow]
            self._log.warning("events dropped: the scheduler has been unreachable", dropped=overflow)

    async def _deliver(self, batch: list[agent_pb2.ModelEventMessage]) -> list[agent_pb2.ModelEventMessage]:
        """Send ``batch`` in order, acknowledged; returns what did not arrive.

        Acknowledged on purpose: a write to an unacknowledged stream can be taken by a connection
        that is already dying, and is then lost without a trace; events must not be.
        """
        if self._events is not None:
            try:
                await self._events.deliver(batch)
                return []
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    self._not_delivered(batch, exc.code(), exc.details())
                    return batch
                self._events = None
                self._log.info("scheduler has no AgentEventsAcked; one AgentEvent call per event")
            except (TimeoutError, NotAcknowledged) as exc:
                code = (
                    grpc.StatusCode.DEADLINE_EXCEEDED
                    if isinstance(exc, TimeoutError)
                    else grpc.StatusCode.UNAVAILABLE
                )
                self._not_delivered(batch, code, str(exc) or "no acknowledgement in time")
                return batch
        return await self._deliver_per_call(batch)

    async def _deliver_per_call(
        self, batch: list[agent_pb2.ModelEventMessage]
    ) -> list[agent_pb2.ModelEventMessage]:
        """One acknowledged AgentEvent call per event (a scheduler without AgentEventsAcked)."""
        for position, message in enumerate(batch):
            try:
                await self._stub.AgentEvent(message, timeout=EVENT_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                self._not_delivered(batch[position:], exc.code(), exc.details())
                return batch[position:]
        return []

    def _not_delivered(
        self, messages: list[agent_pb2.ModelEventMessage], code: grpc.StatusCode, details: str | None
    ) -> None:
        self._log.warning(
            "events not delivered yet, will retry",
            first_model=messages[0].modelName,
            events=len(messages),
            code=code.name,
            details=details,
        )
