"""The engine's side of the scheduler: the Chainer stream (what to run) and pipeline states (readiness).

:class:`ChainerFollower` subscribes to ``Chainer.SubscribePipelineUpdates`` under the engine's name,
sending its gateway's address as metadata (:mod:`apis.engine_gateway`; the scheduler routes the
pipelines it gives this engine there, decision 0022), and applies each update in order: ``Create``
reads that version's spec (``PipelineStatus``, the scheduler's normalised resource), compiles it,
makes its topics and starts its Kafka feed; ``Delete`` stops it (and deletes its topics when
``dataflow.cleanTopicsOnDelete`` asks and the pipeline was unloaded, not moved to another engine).
Each is answered with ``PipelineUpdateEvent`` (success, or the reason it failed). On a new stream
the scheduler resends every live pipeline this engine owns.

:class:`StatusFollower` keeps, per pipeline, whether its latest version is servable (Creating, Ready
or Rebalancing) with ``modelsReady`` (``SubscribePipelineStatus``, ``isPipelineGateway``): the
gateway's ready endpoints answer from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import structlog

from apis.engine_gateway import gateway_metadata
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.runtime import NO_BDP_PROBE
from apis.tls import ClientTls, channel
from apis.validation import InvalidResource
from pipelines.model import Pipeline

log = structlog.get_logger("meshserve.pipelines.engine")
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
CALL_TIMEOUT_SECONDS = 30.0
Update = chainer_pb2.PipelineUpdateMessage
State = scheduler_pb2.PipelineVersionState
# A version an engine may serve: during a move (Rebalancing) or before every Envoy holds its route
# (Creating) the engines that run it answer; the scheduler routes to them only once they confirmed.
SERVABLE = frozenset({State.PipelineCreating, State.PipelineReady, State.PipelineRebalancing})

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
            async with channel(target, tls, options=[GRPC_RECEIVE_LIMIT, NO_BDP_PROBE]) as grpc_channel:
                await follow(grpc_channel)
        except grpc.aio.AioRpcError as error:
            log.info(f"{what} stream ended; reconnecting", code=error.code().name, after=delay)
        on_drop()
        await asyncio.sleep(delay)
        delay = min(delay * 2, RECONNECT_MAX_SECONDS)


class ChainerFollower:
    """Runs what the scheduler's Chainer says (see the module docstring)."""

    def __init__(
        self,
        name: str,
        target: str,
        tls: ClientTls | None,
        start: Start,
        stop: Stop,
        gateway: tuple[str, int, int] | None = None,
    ) -> None:
        self._name = name
        self._metadata: tuple[tuple[str, str], ...] | None = None
        if gateway is not None:
            self.register_gateway(*gateway)
        self._target = target
        self._tls = tls
        self._start = start
        self._stop = stop
        self.versions: dict[str, int] = {}  # pipeline -> version running here
        self._clean: dict[str, bool] = {}
        self.connected = False

    def register_gateway(self, host: str, http_port: int, grpc_port: int) -> None:
        """Where this engine's gateway listens; sent on every subscription from now on."""
        self._metadata = gateway_metadata(host, http_port, grpc_port)

    async def run(self) -> None:
        await _reconnecting("chainer", self._target, self._tls, self._follow, self._dropped)

    def _dropped(self) -> None:
        self.connected = False

    async def _follow(self, grpc_channel: grpc.aio.Channel) -> None:
        chainer = chainer_pb2_grpc.ChainerStub(grpc_channel)
        scheduler = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
        await grpc_channel.channel_ready()
        stream = chainer.SubscribePipelineUpdates(
            chainer_pb2.PipelineSubscriptionRequest(name=self._name), metadata=self._metadata
        )
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
            clean = self._clean.pop(name, False) and not await self._live(scheduler, name)
            await self._stop(name, clean)
            self.versions.pop(name, None)
            log.info("pipeline stopped", pipeline=name, version=update.version)
            return True, "pipeline stopped"
        if update.op != Update.Create:
            return False, f"unknown operation {update.op}"
        try:
            pipeline = await self._spec(scheduler, name, update.version)
            await self._start(pipeline)
        except (InvalidResource, LookupError) as error:
            log.warning("pipeline cannot run", pipeline=name, version=update.version, error=str(error))
            return False, str(error)
        except grpc.aio.AioRpcError as error:
            return False, f"could not read its spec from the scheduler: {error.code().name} {error.details()}"
        self.versions[name] = pipeline.version
        self._clean[name] = pipeline.clean_topics_on_delete
        log.info("pipeline running", pipeline=name, version=pipeline.version)
        return True, "pipeline running"

    async def _live(self, scheduler: scheduler_pb2_grpc.SchedulerAsyncStub, name: str) -> bool:
        """Whether ``name`` is still loaded: a Delete then means it moved to another engine, which
        still uses its topics. When the scheduler cannot tell, the topics are kept."""
        request = scheduler_pb2.PipelineStatusRequest(subscriberName=self._name, name=name)
        try:
            async for status in scheduler.PipelineStatus(request, timeout=CALL_TIMEOUT_SECONDS):
                return status.operation != scheduler_pb2.PipelineStatusResponse.PipelineDelete
        except grpc.aio.AioRpcError as error:
            log.warning(
                "cannot tell whether a stopped pipeline moved; its topics stay", error=error.details()
            )
            return True
        return False

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
            self._ready[name] = latest.status in SERVABLE and latest.modelsReady
