"""The pipeline gateway over gRPC (``inference.GRPCInferenceService``; reference port 9011).

``ModelInfer`` with ``seldon-model: <p>.pipeline`` (or model name ``<p>.pipeline``): the answer has no
``model_name``/``model_version`` (§6.4), echoes the request's ``id`` and ``parameters``, and has
trailing metadata ``x-request-id``, ``x-pipeline-version``, ``x-seldon-route``; failures are a
gRPC status carrying the message (:mod:`pipelines.engine.errors`). ``ModelReady`` answers
``ready`` per the pipeline's state, NOT_FOUND when it is not loaded here.
"""

from __future__ import annotations

import time
from typing import Any

import grpc

from apis.names import REQUEST_ID_HEADER, ROUTE_HEADER
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from pipelines.engine.codec import message_to_response, request_to_message
from pipelines.engine.errors import failure
from pipelines.engine.gateway import Gateway, pipeline_name
from pipelines.engine.http_api import VERSION_HEADER, Metrics

Context = grpc.aio.ServicerContext[Any, Any]


class PipelineInference(v2_dataplane_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, gateway: Gateway, metrics: Metrics) -> None:
        self._gateway = gateway
        self._metrics = metrics

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        started = time.perf_counter()
        pipeline = "?"
        headers = {str(k): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        remaining = context.time_remaining()
        try:
            call = self._gateway.request(headers, request.model_name, deadline=remaining)
            pipeline = call.pipeline
            answer = await self._gateway.infer(call, request_to_message(request))
        except Exception as error:
            mapped = failure(error)
            if mapped is None:
                raise
            self._metrics.observe(mapped.grpc.name, "grpc", pipeline, started)
            await context.abort(mapped.grpc, mapped.message)
        trailers = [(REQUEST_ID_HEADER, call.request_id)]
        if answer is None:
            self._metrics.observe("OK", "grpc", pipeline, started)
            context.set_trailing_metadata(trailers)
            return pb.ModelInferResponse(id=call.request_id)
        trailers.append((VERSION_HEADER, str(answer.version)))
        if answer.routes:
            trailers.append((ROUTE_HEADER, " ".join(answer.routes)))
        context.set_trailing_metadata(trailers)
        self._metrics.observe("OK", "grpc", pipeline, started)
        response = message_to_response(answer.output, request_id=request.id)
        for key, value in request.parameters.items():  # echoed, as the reference does (§6.4)
            response.parameters[key].CopyFrom(value)
        return response

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        headers = {str(k): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        try:
            name = pipeline_name(
                headers.get("seldon-internal-model") or headers.get("seldon-model") or request.name
            )
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if name not in self._gateway.runner.running:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pipeline {name} is not loaded")
        return pb.ModelReadyResponse(ready=self._gateway.ready(name))

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "pipelines have no metadata endpoint (§6.6)")

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="meshserve-pipeline-gateway")

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)
