"""Which models the gateway serves: every model the scheduler declares, followed over the Scheduler API.

On each (re)connection the full list (``ModelStatus``) replaces what the gateway had, so a model
deleted while the stream was down is dropped; then ``SubscribeModelStatus`` (``isModelGateway``)
pushes every change. A model is served from the moment it is declared until it is deleted or all
its versions are terminating: its topics exist as soon as it is loaded (seldon-control-plane.md
scenario 50), and a request sent before it is available gets Envoy's answer on the errors topic.
"""

from __future__ import annotations

import asyncio

import grpc
import structlog

from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.runtime import NO_BDP_PROBE
from apis.tls import ClientTls, channel
from pipelines.modelgateway.config import SUBSCRIBER_NAME
from pipelines.modelgateway.gateway import ModelGateway

log = structlog.get_logger("meshserve.pipelines.modelgateway")
ModelState = scheduler_pb2.ModelStatus
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
LIST_TIMEOUT_SECONDS = 30.0
_GONE = frozenset(
    {
        scheduler_pb2.ModelStatus.ModelTerminating,
        scheduler_pb2.ModelStatus.ModelTerminated,
        scheduler_pb2.ModelStatus.ModelTerminate,
    }
)


def served(status: scheduler_pb2.ModelStatusResponse) -> bool:
    """The model exists and some version of it is not on its way out."""
    return not status.deleted and any(v.state.state not in _GONE for v in status.versions)


def clean_on_delete(status: scheduler_pb2.ModelStatusResponse) -> bool:
    """The newest version's ``dataflow.cleanTopicsOnDelete`` (default false: topics are kept)."""
    if not status.versions:
        return False
    newest = max(status.versions, key=lambda v: v.version)
    return bool(newest.modelDefn.dataflowSpec.cleanTopicsOnDelete) and not status.keepTopics


class SchedulerFollower:
    """Keeps :class:`ModelGateway`'s model set equal to the scheduler's, reconnecting with backoff."""

    def __init__(self, gateway: ModelGateway, target: str, tls: ClientTls | None) -> None:
        self._gateway = gateway
        self._target = target
        self._tls = tls
        self.synced = False  # a full list has been applied since the last (re)connection

    async def run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                async with channel(
                    self._target, self._tls, options=[GRPC_RECEIVE_LIMIT, NO_BDP_PROBE]
                ) as grpc_channel:
                    await self._follow(scheduler_pb2_grpc.SchedulerStub(grpc_channel))
            except grpc.aio.AioRpcError as error:
                if self.synced:
                    delay = RECONNECT_MIN_SECONDS
                log.info("scheduler stream ended; reconnecting", code=error.code().name, after=delay)
            self.synced = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _follow(self, stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
        listing = stub.ModelStatus(
            scheduler_pb2.ModelStatusRequest(subscriberName=SUBSCRIBER_NAME, allVersions=True),
            timeout=LIST_TIMEOUT_SECONDS,
        )
        wanted = {s.modelName: clean_on_delete(s) async for s in listing if served(s)}
        self._gateway.replace(wanted)
        self.synced = True
        log.info("following the scheduler's models", models=len(wanted))
        request = scheduler_pb2.ModelSubscriptionRequest(subscriberName=SUBSCRIBER_NAME, isModelGateway=True)
        async for status in stub.SubscribeModelStatus(request):
            self._apply(status)

    def _apply(self, status: scheduler_pb2.ModelStatusResponse) -> None:
        if served(status):
            self._gateway.want(status.modelName, clean_on_delete=clean_on_delete(status))
        else:
            self._gateway.drop(status.modelName)
