"""The ``seldon.mlops.scheduler.Scheduler`` gRPC service: converts messages and calls the core.

Domain errors become gRPC status codes in one table (:mod:`scheduler.errors`): a bad resource
is ``INVALID_ARGUMENT`` (nothing changed), an unknown model ``NOT_FOUND``. Streams stay open and
push on every change, as the Seldon controller expects; the read-only RPCs (``ModelStatus``,
``ServerStatus``) send the current state and end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from scheduler import status
from scheduler.core import Scheduler
from scheduler.experiments import Experiments
from scheduler.pipeline_records import deleted_pipeline_status, pipeline_status
from scheduler.pipelines import Pipelines
from scheduler.server_scaling import ScalingRequest

log = structlog.get_logger("meshserve.scheduler.api")
Context = grpc.aio.ServicerContext[Any, Any]

VERSION = "meshserve-0.1.0"


class SchedulerService(scheduler_pb2_grpc.SchedulerServicer):
    """Seldon's controller-facing API: each RPC converts messages and calls one use case.

    Mutating RPCs answer only once the change is durable (``commit``); errors are mapped to
    status codes by :class:`scheduler.errors.StatusMapping`, never here.
    """

    def __init__(self, core: Scheduler, experiments: Experiments, pipelines: Pipelines) -> None:
        self._core = core
        self._experiments = experiments
        self._pipelines = pipelines

    async def LoadModel(
        self, request: scheduler_pb2.LoadModelRequest, context: Context
    ) -> scheduler_pb2.LoadModelResponse:
        self._core.load_model(request.model)
        await self._core.committed()
        return scheduler_pb2.LoadModelResponse()

    async def ServerNotify(
        self, request: scheduler_pb2.ServerNotifyRequest, context: Context
    ) -> scheduler_pb2.ServerNotifyResponse:
        self._core.notify_servers(request.servers)
        self._core.commit()
        return scheduler_pb2.ServerNotifyResponse()

    async def UnloadModel(
        self, request: scheduler_pb2.UnloadModelRequest, context: Context
    ) -> scheduler_pb2.UnloadModelResponse:
        self._core.unload_model(request.model.name)
        await self._core.committed()
        return scheduler_pb2.UnloadModelResponse()

    async def ModelStatus(
        self, request: scheduler_pb2.ModelStatusRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ModelStatusResponse]:
        if request.HasField("model") and request.model.name:
            record = self._core.model(request.model.name)
            yield status.model_status(record, all_versions=request.allVersions)
            return
        for name in sorted(self._core.models):
            yield status.model_status(self._core.models[name], all_versions=request.allVersions)

    async def ServerStatus(
        self, request: scheduler_pb2.ServerStatusRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ServerStatusResponse]:
        if request.HasField("name") and request.name:
            self._core.server(request.name)
            yield self._server_status(request.name)
            return
        for name in sorted(self._core.servers):
            yield self._server_status(name)

    async def SchedulerStatus(
        self, request: scheduler_pb2.SchedulerStatusRequest, context: Context
    ) -> scheduler_pb2.SchedulerStatusResponse:
        return scheduler_pb2.SchedulerStatusResponse(applicationVersion=VERSION)

    async def SubscribeModelStatus(
        self, request: scheduler_pb2.ModelSubscriptionRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ModelStatusResponse]:
        log.info("model status subscriber", subscriber=request.subscriberName)
        async for name in _changes(self._core.on_model_change, initial=list(self._core.models)):
            record = self._core.models.get(name)
            yield (
                status.model_status(record, all_versions=True)
                if record is not None
                else status.deleted_model_status(name)
            )

    async def SubscribeServerStatus(
        self, request: scheduler_pb2.ServerSubscriptionRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ServerStatusResponse]:
        """Every server's status, then each change, and the scheduler's ScalingRequests (which the
        controller carries out)."""
        log.info("server status subscriber", subscriber=request.subscriberName)
        async for name in _server_events(self._core):
            if isinstance(name, ScalingRequest):
                yield status.scaling_request(name, self._core.servers.get(name.server))
            elif name in self._core.servers:
                yield self._server_status(name)
            else:
                yield scheduler_pb2.ServerStatusResponse(
                    type=scheduler_pb2.ServerStatusResponse.StatusUpdate, serverName=name
                )

    # -- experiments ------------------------------------------------------------------------------

    async def StartExperiment(
        self, request: scheduler_pb2.StartExperimentRequest, context: Context
    ) -> scheduler_pb2.StartExperimentResponse:
        self._experiments.start(request.experiment)
        self._core.commit()
        return scheduler_pb2.StartExperimentResponse()

    async def StopExperiment(
        self, request: scheduler_pb2.StopExperimentRequest, context: Context
    ) -> scheduler_pb2.StopExperimentResponse:
        self._experiments.stop(request.name)
        self._core.commit()
        return scheduler_pb2.StopExperimentResponse()

    async def ExperimentStatus(
        self, request: scheduler_pb2.ExperimentStatusRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ExperimentStatusResponse]:
        if request.HasField("name") and request.name:
            self._experiments.get(request.name)
            yield self._experiment_status(request.name)
            return
        for name in sorted(self._experiments.experiments):
            yield self._experiment_status(name)

    async def SubscribeExperimentStatus(
        self, request: scheduler_pb2.ExperimentSubscriptionRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ExperimentStatusResponse]:
        log.info("experiment status subscriber", subscriber=request.subscriberName)
        initial = list(self._experiments.experiments)
        async for name in _changes(self._experiments.on_change, initial=initial):
            yield self._experiment_status(name)

    def _experiment_status(self, name: str) -> scheduler_pb2.ExperimentStatusResponse:
        experiment = self._experiments.experiments.get(name)
        if experiment is None:  # stopped: an inactive status says it is gone
            return scheduler_pb2.ExperimentStatusResponse(
                experimentName=name, statusDescription="experiment stopped"
            )
        return status.experiment_status(experiment, self._experiments.status(name))

    # -- pipelines --------------------------------------------------------------------------------

    async def LoadPipeline(
        self, request: scheduler_pb2.LoadPipelineRequest, context: Context
    ) -> scheduler_pb2.LoadPipelineResponse:
        self._pipelines.load(request.pipeline)
        await self._core.committed()
        return scheduler_pb2.LoadPipelineResponse()

    async def UnloadPipeline(
        self, request: scheduler_pb2.UnloadPipelineRequest, context: Context
    ) -> scheduler_pb2.UnloadPipelineResponse:
        self._pipelines.unload(request.name)
        await self._core.committed()
        return scheduler_pb2.UnloadPipelineResponse()

    async def PipelineStatus(
        self, request: scheduler_pb2.PipelineStatusRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.PipelineStatusResponse]:
        if request.HasField("name") and request.name:
            record = self._pipelines.get(request.name)
            yield pipeline_status(record, all_versions=request.allVersions)
            return
        for name in sorted(self._pipelines.records):
            yield pipeline_status(self._pipelines.records[name], all_versions=request.allVersions)

    async def SubscribePipelineStatus(
        self, request: scheduler_pb2.PipelineSubscriptionRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.PipelineStatusResponse]:
        log.info("pipeline status subscriber", subscriber=request.subscriberName)
        initial = sorted(self._pipelines.records)
        async for name in _changes(self._pipelines.on_change, initial=initial):
            record = self._pipelines.records.get(name)
            yield (
                pipeline_status(record, all_versions=True)
                if record is not None
                else deleted_pipeline_status(name)
            )

    async def SubscribeControlPlane(
        self, request: scheduler_pb2.ControlPlaneSubscriptionRequest, context: Context
    ) -> AsyncIterator[scheduler_pb2.ControlPlaneResponse]:
        # A controller re-sends its resources on these events; meshserve keeps its own state, so the
        # stream just tells it the scheduler is up and then stays open.
        for event in (
            scheduler_pb2.ControlPlaneResponse.SEND_SERVERS,
            scheduler_pb2.ControlPlaneResponse.SEND_MODELS,
        ):
            yield scheduler_pb2.ControlPlaneResponse(event=event)
        await asyncio.Event().wait()

    def _server_status(self, name: str) -> scheduler_pb2.ServerStatusResponse:
        return status.server_status(self._core.servers[name], self._core.loaded_per_replica(name))


async def _server_events(core: Scheduler) -> AsyncIterator[str | ScalingRequest]:
    """Servers that changed (every one first) and scaling requests, in order; bursts coalesce per
    server (the latest status or request is sent), so the queue holds at most two entries a server."""
    queue: asyncio.Queue[tuple[bool, str]] = asyncio.Queue()  # (is a scaling request, server)
    changed: set[str] = set()
    scaling: dict[str, ScalingRequest] = {}

    def push(name: str) -> None:
        if name not in changed:
            changed.add(name)
            queue.put_nowait((False, name))

    def requested(request: ScalingRequest) -> None:
        if request.server not in scaling:
            queue.put_nowait((True, request.server))
        scaling[request.server] = request

    for name in list(core.servers):
        push(name)
    unsubscribe = (core.on_server_change(push), core.on_scaling_request(requested))
    try:
        while True:
            is_request, name = await queue.get()
            if is_request:
                yield scaling.pop(name)
            else:
                changed.discard(name)
                yield name
    finally:
        for stop in unsubscribe:
            stop()


async def _changes(
    subscribe: Callable[[Callable[[str], None]], Callable[[], None]], *, initial: list[str]
) -> AsyncIterator[str]:
    """Names that changed, starting with ``initial``; coalesces bursts (latest state is sent)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    queued: set[str] = set()

    def push(name: str) -> None:
        if name not in queued:
            queued.add(name)
            queue.put_nowait(name)

    for name in initial:
        push(name)
    unsubscribe = subscribe(push)
    try:
        while True:
            name = await queue.get()
            queued.discard(name)
            yield name
    finally:
        unsubscribe()
