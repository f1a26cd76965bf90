"""Calls a model through Envoy, as every other caller does (routes, retries, experiments apply).

REST: ``POST /v2/models/<m>/infer`` with ``seldon-model: <m>``; gRPC: ``ModelInfer`` with
``model_name=<m>`` and the same metadata. The request's ``x-*`` headers (but not
``x-seldon-route``: that is the route a *previous* model took, and Envoy would stick to it) travel
as HTTP headers / gRPC metadata; the answer's ``x-*`` headers come back with it. A failed call
(transport error, non-200, gRPC status, timeout) raises :class:`CallFailed` with the text the
errors topic gets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import grpc

from apis.kafka import InferType, propagated
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.names import MODEL_HEADER, ROUTE_HEADER
from apis.v2_dataplane import v2_dataplane_pb2_grpc
from pipelines.modelgateway.payloads import Call, GrpcCall

Headers = Sequence[tuple[str, bytes]]
MAX_ERROR_BODY = 4_096  # of a failed REST answer, quoted on the errors topic
MAX_HEADER_VALUE = 8_192
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_HEADER_VALUE = re.compile(rb"[\x20-\x7e]*")  # printable ASCII: what gRPC metadata carries as text


class CallFailed(Exception):
    """The model did not answer with a result; ``str()`` is the reason."""


@dataclass(frozen=True)
class Answer:
    value: bytes
    headers: list[tuple[str, bytes]]
    infer_type: InferType


class EnvoyClient:
    """One HTTP session and one gRPC channel to Envoy, shared by every worker."""

    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self._base = f"http://{host}:{port}"
        self._timeout = timeout
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=0),  # bounded by the gateway's workers
        )
        self._channel = grpc.aio.insecure_channel(f"{host}:{port}", options=[GRPC_RECEIVE_LIMIT])
        self._grpc = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self._http.close()
        await self._channel.close()

    async def infer(self, model: str, call: Call, headers: Headers) -> Answer:
        outgoing = [(k.lower(), v.decode()) for k, v in headers if _forwarded(k, v)]
        outgoing.append((MODEL_HEADER, model))
        if isinstance(call, GrpcCall):
            return await self._infer_grpc(model, call, outgoing)
        return await self._infer_rest(model, call.body, outgoing)

    async def _infer_rest(self, model: str, body: bytes, headers: list[tuple[str, str]]) -> Answer:
        url = f"{self._base}/v2/models/{model}/infer"
        try:
            async with self._http.post(
                url, data=body, headers=[*headers, ("content-type", "application/json")]
            ) as response:
                value = await response.read()
                if response.status != 200:
                    text = value[:MAX_ERROR_BODY].decode(errors="replace")
                    raise CallFailed(f"model {model}: HTTP {response.status}: {text}")
                answered = [(k.lower(), v.encode()) for k, v in response.headers.items() if propagated(k)]
        except (aiohttp.ClientError, TimeoutError) as error:
            raise CallFailed(f"model {model}: REST call through Envoy failed: {error!r}") from error
        return Answer(value, answered, InferType.JSON_RESPONSE)

    async def _infer_grpc(self, model: str, call: GrpcCall, metadata: list[tuple[str, str]]) -> Answer:
        request = call.request
        request.model_name, request.model_version = model, ""
        rpc = self._grpc.ModelInfer(request, metadata=metadata, timeout=self._timeout)
        try:
            response = await rpc
            answered = [*(await rpc.initial_metadata() or ()), *(await rpc.trailing_metadata() or ())]
        except grpc.aio.AioRpcError as error:
            raise CallFailed(f"model {model}: gRPC {error.code().name}: {error.details()}") from error
        except TimeoutError as error:
            raise CallFailed(f"model {model}: gRPC call timed out after {self._timeout} s") from error
        headers = [(str(k).lower(), _raw(v)) for k, v in answered if propagated(str(k))]
        return Answer(response.SerializeToString(), headers, InferType.PROTO_RESPONSE)


def _forwarded(name: str, value: bytes) -> bool:
    """Propagated, and valid as an HTTP header and gRPC metadata (others are left out, not mangled)."""
    return (
        propagated(name)
        and name.lower() != ROUTE_HEADER
        and _HEADER_NAME.fullmatch(name.lower()) is not None
        and len(value) <= MAX_HEADER_VALUE
        and _HEADER_VALUE.fullmatch(value) is not None
    )


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
