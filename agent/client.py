"""The control loop: subscribe to the scheduler's AgentService, run its operations, report events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from structlog.typing import FilteringBoundLogger

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.dispatcher import OperationDispatcher
from agent.operations import Event, ModelOperator, Outcome
from agent.state import ReplicaState
from apis.mlops.agent import agent_pb2, agent_pb2_grpc

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
        )

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

    async def _subscribe_once(self) -> int:
        """Run one Subscribe stream to its end; returns how many operations it delivered."""
        request = self.subscribe_request()
        call = self._stub.Subscribe(request)
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
                received += 1
                self._dispatcher.submit(message)
            self._log.warning("scheduler closed the stream")
        except grpc.aio.AioRpcError as exc:
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
            ),
            loadedModels=self._state.loaded_models(),
            availableMemoryBytes=self._state.available_bytes(),
        )

    async def report(self, outcome: Outcome) -> None:
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
        try:
            await self._stub.AgentEvent(message, timeout=EVENT_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            # Not retried: a re-subscription reports loadedModels, which is what the scheduler trusts.
            self._log.warning(
                "event not delivered",
                model=outcome.model_name,
                version=outcome.version,
                outcome=Event.Name(outcome.event),
                code=exc.code().name,
                details=exc.details(),
            )
