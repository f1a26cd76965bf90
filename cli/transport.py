"""One inference call over REST (aiohttp) or gRPC (grpc.aio), with the same reply shape.

A client is built once per command and reused for every iteration of ``-i N``: one HTTP session,
one gRPC channel. Per-call failures come back as a failed :class:`Reply`, not an exception, so a
run of N calls can count them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import grpc
from google.protobuf import json_format

from apis.names import MODEL_HEADER, PIPELINE_SUFFIX
from apis.v2_dataplane import v2_dataplane_pb2, v2_dataplane_pb2_grpc
from cli.output import dumps
from cli.routes import ROUTE_HEADER

Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Reply:
    ok: bool
    body: str = ""
    error: str = ""
    headers: Headers = field(default_factory=list)
    # gRPC trailing metadata; None for REST, which has only headers.
    trailers: Headers | None = None
    route: str | None = None


class InferClient(Protocol):
    async def infer(self, extra_headers: Sequence[tuple[str, str]]) -> Reply: ...

    async def close(self) -> None: ...


class RestClient:
    """``model`` is the ``seldon-model`` header Envoy routes on; ``path_name`` (default ``model``) the
    name in the URL, which a pipeline call sets to the bare pipeline name."""

    def __init__(
        self,
        *,
        host: str,
        model: str,
        body: bytes,
        timeout: float,
        authority: str | None,
        path_name: str | None = None,
    ) -> None:
        self._host = host
        self._model = model
        self._path_name = path_name or model
        self._body = body
        self._timeout = timeout
        self._authority = authority
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def infer(self, extra_headers: Sequence[tuple[str, str]]) -> Reply:
        url = f"http://{self._host}/v2/models/{self._path_name}/infer"
        return await self.request("POST", url, extra_headers, data=self._body)

    async def metadata(self) -> Reply:
        return await self.request("GET", f"http://{self._host}/v2/models/{self._path_name}", ())

    async def request(
        self, method: str, url: str, extra_headers: Iterable[tuple[str, str]], data: bytes | None = None
    ) -> Reply:
        extra = list(extra_headers)
        headers = {"Content-Type": "application/json"}
        if not _has_model_header(extra):  # --header seldon-model=... replaces the default
            headers[MODEL_HEADER] = self._model
        if self._authority:
            headers["Host"] = self._authority
        headers.update(extra)
        try:
            async with self._session.request(method, url, data=data, headers=headers) as response:
                text = (await response.text()).strip()
                received = list(response.headers.items())
                route = _joined(response.headers.getall(ROUTE_HEADER, []))
                if not 200 <= response.status < 300:
                    if not text and response.status == 404:
                        text = _no_route(
                            next((v for k, v in headers.items() if k.lower() == MODEL_HEADER), "")
                        )
                    error = f"HTTP {response.status}: {text}"
                    return Reply(ok=False, error=error, headers=received)
                return Reply(ok=True, body=text, headers=received, route=route)
        except aiohttp.ClientConnectionError as exc:
            return Reply(ok=False, error=f"cannot reach inference server at {self._host}: {exc}")
        except aiohttp.ClientError as exc:
            return Reply(ok=False, error=f"request to {url} failed: {exc}")
        except TimeoutError:
            return Reply(
                ok=False, error=f"inference server at {self._host} gave no answer within {self._timeout:g}s"
            )

    async def close(self) -> None:
        await self._session.close()


class GrpcClient:
    def __init__(
        self,
        *,
        host: str,
        model: str,
        request: v2_dataplane_pb2.ModelInferRequest,
        timeout: float,
        authority: str | None,
    ) -> None:
        self._model = model
        self._request = request
        self._timeout = timeout
        options = [("grpc.default_authority", authority)] if authority else []
        self._channel = grpc.aio.insecure_channel(host, options=options)
        self._stub = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(self, extra_headers: Sequence[tuple[str, str]]) -> Reply:
        # gRPC metadata keys must be lower-case.
        extra = [(key.lower(), value) for key, value in extra_headers]
        metadata = extra if _has_model_header(extra) else [(MODEL_HEADER, self._model), *extra]
        call = self._stub.ModelInfer(self._request, metadata=metadata, timeout=self._timeout)
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            details = exc.details()
            if not details and exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                details = _no_route(dict(metadata).get(MODEL_HEADER, ""))
            return Reply(
                ok=False,
                error=f"{exc.code().name}: {details}",
                headers=_pairs(exc.initial_metadata()),
                trailers=_pairs(exc.trailing_metadata()),
            )
        headers = _pairs(await call.initial_metadata())
        trailers = _pairs(await call.trailing_metadata())
        route = _joined([value for key, value in [*headers, *trailers] if key == ROUTE_HEADER])
        body = dumps(json_format.MessageToDict(response))
        return Reply(ok=True, body=body, headers=headers, trailers=trailers, route=route)

    async def close(self) -> None:
        await self._channel.close()


def _no_route(model: str) -> str:
    # Envoy answers an empty 404 (gRPC: UNIMPLEMENTED) when no route has this seldon-model.
    if model.endswith(PIPELINE_SUFFIX):
        pipeline = model.removesuffix(PIPELINE_SUFFIX)
        return (
            f"pipeline {pipeline!r} not found: no route for seldon-model {model!r}; check "
            f"'meshserve pipeline status {pipeline}' ('meshserve pipeline list' shows the pipelines)"
        )
    return (
        f"no route for seldon-model {model!r}: check 'meshserve model status' "
        "(or 'meshserve experiment status' for <name>.experiment)"
    )


def _has_model_header(headers: Iterable[tuple[str, str]]) -> bool:
    return any(key.lower() == MODEL_HEADER for key, _ in headers)


def _joined(values: Sequence[str]) -> str | None:
    """One route string from every ``x-seldon-route`` value (a header may be repeated per hop)."""
    return " ".join(values) if values else None


def _pairs(metadata: Any) -> Headers:
    if metadata is None:
        return []
    return [(str(key), value if isinstance(value, str) else repr(value)) for key, value in metadata]
