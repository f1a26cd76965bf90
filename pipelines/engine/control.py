"""The engine's side of the scheduler: the Chainer stream (what to run) and pipeline states (readiness).

:class:`ChainerFollower` subscribes to ``Chainer.SubscribePipelineUpdates`` under the engine's name
and applies each update in order: ``Create`` reads that version's spec (``PipelineStatus``, the
scheduler's normalised resource), compiles it, makes its topics and starts its Kafka feed; ``Delete``
stops it (and deletes its topics when ``dataflow.cleanTopicsOnDelete`` asks). Each is answered with
``PipelineUpdateEvent`` (success, or the reason it failed). On a new stream the scheduler resends every
live pipeline, so pipelines not resent are stopped.

:class:`StatusFollower` keeps, per pipeline, whether its latest version is ``PipelineReady`` with
``modelsReady`` (``SubscribePipelineStatus``, ``isPipelineGateway``): the gateway's ready endpoints
answer from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import structlog

from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.tls import ClientTls, channel
from apis.validation import InvalidResource
from pipelines.model import Pipeline

log = structlog.get_logger("meshserve.pipelines.engine")
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
CALL_TIMEOUT_SECONDS = 30.0
Update = chainer_pb2.PipelineUpdateMessage
READY = scheduler_pb2.PipelineVersionState.PipelineReady

Start = Callable[[Pipeline], Awaitable[None]]
Stop = Callable[[str, bool], Awaitable[None]]  # (pipeline, clean its topics)


async def _reconnecting(
    what: str,
    target: str,
    tls: ClientTls | None,
    follow: Callable[[grpc.aio.Channel], Awaitable[None]],
    on_drop: Callable[[], None],
) -> None:
    delay = RECONNECT_MIN_SECONDS
    while True:
        try:
            async with channel(target, tls, options=[GRPC_RECEIVE_LIMIT]) as grpc_channel:
                await follow(grpc_channel)
        except grpc.aio.AioRpcError as error:
            log.info(f"{what} stream ended; reconnecting", code=error.code().name, after=delay)
        on_drop()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)


class ChainerFollower:
    """Runs what the scheduler's Chainer says (see the module docstring)."""

    def __init__(self, name: str, target: str, tls: ClientTls | None, start: Start, stop: Stop) -> None:
        self._name = name
        self._target = target
        self._tls = tls
        self._start = start
        self._stop = stop
        self.versions: dict[str, int] = {}  # pipeline -> version running here
        self._clean: dict[str, bool] = {}
        self.connected = False

    async def run(self) -> None:
        await _reconnecting("chainer", self._target, self._tls, self._follow, self._dropped)

    def _dropped(self) -> None:
        self.connected = False

    async def _follow(self, grpc_channel: grpc.aio.Channel) -> None:
        chainer = chainer_pb2_grpc.ChainerStub(grpc_channel)
        scheduler = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        await grpc_channel.channel_ready()
        stream = chainer.SubscribePipelineUpdates(chainer_pb2.PipelineSubscriptionRequest(name=self._name))
        self.connected = True
        log.info("subscribed to the scheduler's pipelines", engine=self._name)
        await self._forget_deleted(scheduler)
        async for update in stream:
            success, reason = await self._apply(scheduler, update)
            status = chainer_pb2.PipelineUpdateStatusMessage(update=update, success=success, reason=reason)
            await chainer.PipelineUpdateEvent(status, timeout=CALL_TIMEOUT_SECONDS)

    async def _forget_deleted(self, scheduler: scheduler_pb2_grpc.SchedulerAsyncStub) -> None:
        """Stop what was unloaded while the stream was down (the scheduler resends only live ones)."""
        if not self.versions:
            return
        live: set[str] = set()
        request = scheduler_pb2.PipelineStatusRequest(subscriberName=self._name)
        async for status in scheduler.PipelineStatus(request, timeout=CALL_TIMEOUT_SECONDS):
            if status.operation != scheduler_pb2.PipelineStatusResponse.PipelineDelete:
                live.add(status.pipelineName)
        for name in sorted(set(self.versions) - live):
            await self._stop(name, self._clean.pop(name, False))
            self.versions.pop(name, None)
            log.info("pipeline unloaded while disconnected; stopped", pipeline=name)

    async def _apply(
        self, scheduler: scheduler_pb2_grpc.SchedulerAsyncStub, update: Update
    ) -> tuple[bool, str]:
        name = update.pipeline
        if update.op == Update.Delete:
            await self._stop(name, self._clean.pop(name, False))
            self.versions.pop(name, None)
            log.info("pipeline stopped", pipeline=name, version=update.version)
            return True, "pipeline stopped"
        if update.op != Update.Create:
            return False, f"unknown operation {update.op}"
        try:
            pipeline = await self._spec(scheduler, name, update.version)
            await self._start(pipeline)
        except (InvalidResource, NotImplementedError, LookupError) as error:
            log.warning("pipeline cannot run", pipeline=name, version=update.version, error=str(error))
            return False, str(error)
        except grpc.aio.AioRpcError as error:
            return False, f"could not read its spec from the scheduler: {error.code().name} {error.details()}"
        self.versions[name] = pipeline.version
        self._clean[name] = pipeline.clean_topics_on_delete
        log.info("pipeline running", pipeline=name, version=pipeline.version)
        return True, "pipeline running"

    async def _spec(
        self, scheduler: scheduler_pb2_grpc.SchedulerAsyncStub, name: str, version: int
    ) -> Pipeline:
        request = scheduler_pb2.PipelineStatusRequest(subscriberName=self._name, name=name, allVersions=True)
        async for status in scheduler.PipelineStatus(request, timeout=CALL_TIMEOUT_SECONDS):
            for held in status.versions:
                if held.state.pipelineVersion == version:
                    return Pipeline.from_proto(held.pipeline)
        raise LookupError(f"the scheduler has no version {version} of pipeline {name}")


class StatusFollower:
    """Per pipeline: latest version Ready with its models ready (see the module docstring)."""

    def __init__(self, name: str, target: str, tls: ClientTls | None) -> None:
        self._name = name
        self._target = target
        self._tls = tls
        self._ready: dict[str, bool] = {}

    def ready(self, pipeline: str) -> bool:
        return self._ready.get(pipeline, False)

    def known(self, pipeline: str) -> bool:
        return pipeline in self._ready

    async def run(self) -> None:
        await _reconnecting("pipeline status", self._target, self._tls, self._follow, self._ready.clear)

    async def _follow(self, grpc_channel: grpc.aio.Channel) -> None:
        stub = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        request = scheduler_pb2.PipelineSubscriptionRequest(subscriberName=self._name, isPipelineGateway=True)
        async for status in stub.SubscribePipelineStatus(request):
            name = status.pipelineName
            if status.operation == scheduler_pb2.PipelineStatusResponse.PipelineDelete or not status.versions:
                self._ready.pop(name, None)
                continue
            latest = max(status.versions, key=lambda v: v.state.pipelineVersion).state
            self._ready[name] = latest.status == READY and latest.modelsReady
