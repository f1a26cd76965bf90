"""The ``seldon.mlops.agent.AgentService`` gRPC service (port 9005): agents register and report.

Domain errors become gRPC status codes in :mod:`scheduler.errors`, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from apis.mlops.agent import agent_pb2, agent_pb2_grpc
from apis.names import AGENT_ID_HEADER
from scheduler.core import Scheduler

log = structlog.get_logger("meshserve.scheduler.agents")
Context = grpc.aio.ServicerContext[Any, Any]
DRAIN_TIMEOUT_SECONDS = 300


def agent_id(context: Context) -> str:
    """The identity token an agent sends with its calls (agent/identity.py); empty when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == AGENT_ID_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, core: Scheduler) -> None:
        self._core = core

    async def Subscribe(
        self, request: agent_pb2.AgentSubscribeRequest, context: Context
    ) -> AsyncIterator[agent_pb2.ModelOperationMessage]:
        link = self._core.agent_connected(request, agent_id(context))
        try:
            while (operation := await link.outbox.get()) is not None:
                await self._core.committing()
                yield operation
        finally:
            self._core.agent_disconnected(link)

    async def SubscribeBatched(
        self, request: agent_pb2.AgentSubscribeRequest, context: Context
    ) -> AsyncIterator[agent_pb2.ModelOperationBatch]:
        """Subscribe: once the commit in flight (if any) has ended (:meth:`Scheduler.committing`),
        every operation queued so far in one stream message."""
        link = self._core.agent_connected(request, agent_id(context))
        try:
            while (operation := await link.outbox.get()) is not None:
                await self._core.committing()  # what queues meanwhile joins this message
                batch = agent_pb2.ModelOperationBatch()
                batch.operations.append(operation)
                closed = False
                while not link.outbox.empty():
                    queued = link.outbox.get_nowait()
                    if queued is None:
                        closed = True
                        break
                    batch.operations.append(queued)
                yield batch
                if closed:
                    return
        finally:
            self._core.agent_disconnected(link)

    async def AgentEvent(
        self, request: agent_pb2.ModelEventMessage, context: Context
    ) -> agent_pb2.ModelEventResponse:
        self._core.agent_event(request)
        return agent_pb2.ModelEventResponse()

    async def AgentEventsAcked(
        self, request_iterator: AsyncIterator[agent_pb2.ModelEventBatch], context: Context
    ) -> AsyncIterator[agent_pb2.ModelEventBatchAck]:
        """An agent's events, a batch per message, each answered once applied (its delivery)."""
        async for batch in request_iterator:
            self._core.agent_events(batch.events)
            yield agent_pb2.ModelEventBatchAck(sequence=batch.sequence)

    async def ModelScalingTrigger(
        self,
        request_iterator: AsyncIterator[agent_pb2.ModelScalingTriggerMessage],
        context: Context,
    ) -> agent_pb2.ModelScalingTriggerResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "model autoscaling is not enabled")

    async def AgentDrain(
        self, request: agent_pb2.AgentDrainRequest, context: Context
    ) -> agent_pb2.AgentDrainResponse:
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                await self._core.drain(request.serverName, request.replicaIdx)
        except TimeoutError as error:
            raise TimeoutError("models did not move off the replica in time") from error
        return agent_pb2.AgentDrainResponse(success=True)
