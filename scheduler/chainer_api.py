"""The ``seldon.mlops.chainer.Chainer`` gRPC service: dataflow engines subscribe and answer here.

Served on the scheduler API port (decision 0019). ``SubscribePipelineUpdates`` sends an engine
every live pipeline, then each change; ``PipelineUpdateEvent`` takes its answer for one update.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from scheduler.pipelines import Pipelines

Context = grpc.aio.ServicerContext[Any, Any]


class ChainerService(chainer_pb2_grpc.ChainerServicer):
    def __init__(self, pipelines: Pipelines) -> None:
        self._pipelines = pipelines

    async def SubscribePipelineUpdates(
        self, request: chainer_pb2.PipelineSubscriptionRequest, context: Context
    ) -> AsyncIterator[chainer_pb2.PipelineUpdateMessage]:
        session = self._pipelines.engine_subscribed(request.name)
        try:
            while (update := await session.next()) is not None:
                yield update
        finally:
            self._pipelines.engines.unsubscribe(session)

    async def PipelineUpdateEvent(
        self, request: chainer_pb2.PipelineUpdateStatusMessage, context: Context
    ) -> chainer_pb2.PipelineUpdateStatusResponse:
        self._pipelines.engine_answered(request)
        return chainer_pb2.PipelineUpdateStatusResponse()
