"""The reload listener: where Envoy sends a request the model server answered "no such model".

An overcommitted replica evicts models (agent/residency.py). Envoy knows nothing of that: it sends
every request to the model server (priority 0) and, when the model server answers 404 (gRPC
NOT_FOUND), retries on the next priority, this listener (decision 0014). Here the model is reloaded
under its per-model lock and the request forwarded to the model server; the caller sees a slower
200, not an error. Resident models never pass through here.

A data-plane listener, so it serves only what it needs: REST ``POST /v2/models/<m>/infer``,
``GET /v2/models/<m>/ready`` and ``GET /v2/models/<m>`` (Envoy has already rewritten ``<m>`` to the
versioned name), and gRPC ``ModelInfer``, ``ModelReady``, ``ModelMetadata`` (the body's
``name``/``model_name`` already rewritten by Envoy's Lua filter). The name must be a versioned name
(full match) assigned to this replica, else 404 / NOT_FOUND. At most ``max_in_flight`` requests are
handled at once; beyond that, and when a reload fails, 503 / UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agent.errors import AgentError
from agent.residency import NotAssigned, Residency
from apis.limits import GRPC_RECEIVE_LIMIT, MAX_MESSAGE_BYTES, MAX_NAME_LENGTH
from apis.names import RETRY_ELSEWHERE_HEADER
from apis.v2_dataplane import v2_dataplane_pb2 as pb

DEFAULT_MAX_IN_FLIGHT = 256
FORWARD_TIMEOUT_S = 300.0
GRPC_SERVICE = "inference.GRPCInferenceService"
_VERSIONED = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?_[0-9]{1,10}")
_FORWARDED_HEADERS = ("content-type", "x-request-id")
_RETRY_ELSEWHERE = {RETRY_ELSEWHERE_HEADER: "true"}
_RETRY_ELSEWHERE_METADATA = ((RETRY_ELSEWHERE_HEADER, "true"),)


def is_versioned_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH + 11 and _VERSIONED.fullmatch(name) is not None


class Unavailable(Exception):
    """The listener is at its bound, or the reload failed: the caller may try again."""


class ReloadGate:
    """Validates the name, reloads the model if evicted, counts requests in flight per model.

    Also an :class:`agent.residency.InFlightSource`: requests forwarded here are in flight too.
    """

    def __init__(self, residency: Residency, *, max_in_flight: int, logger: FilteringBoundLogger) -> None:
        self._residency = residency
        self._max_in_flight = max_in_flight
        self._log = logger
        self._in_flight: dict[str, int] = {}

    async def active(self) -> dict[str, int] | None:
        return dict(self._in_flight)

    async def run(self, name: str, forward: Callable[[], Awaitable[Any]]) -> Any:
        """Reload ``name`` if needed, then ``forward``. Raises NotAssigned or Unavailable."""
        if not is_versioned_name(name):
            raise NotAssigned(name)
        if sum(self._in_flight.values()) >= self._max_in_flight:
            raise Unavailable(f"the reload listener is at its limit of {self._max_in_flight} requests")
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        try:
            try:
                await self._residency.ensure_resident(name)
            except AgentError as exc:
                self._log.warning("reload failed", served_name=name, error=str(exc))
                raise Unavailable(f"model {name} could not be reloaded: {exc}") from exc
            return await forward()
        finally:
            self._in_flight[name] -= 1
            if not self._in_flight[name]:
                del self._in_flight[name]


class RestForwarder:
    """The REST half: an aiohttp app forwarding to MLServer's HTTP port."""

    def __init__(self, gate: ReloadGate, *, mlserver_url: str) -> None:
        self._gate = gate
        self._mlserver_url = mlserver_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_post("/v2/models/{name}/infer", self._handle)
        app.router.add_get("/v2/models/{name}/ready", self._handle)
        app.router.add_get("/v2/models/{name}", self._handle)
        return app

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            return await self._gate.run(name, lambda: self._forward(request))  # type: ignore[no-any-return]
        except NotAssigned:
            return web.json_response({"error": f"Model {name} not found on this replica"}, status=404)
        except Unavailable as exc:
            return web.json_response({"error": str(exc)}, status=503, headers=_RETRY_ELSEWHERE)

    async def _forward(self, request: web.Request) -> web.Response:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        headers = {key: request.headers[key] for key in _FORWARDED_HEADERS if key in request.headers}
        body = await request.read()
        url = f"{self._mlserver_url}{request.path}"
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                payload = await upstream.read()
                reply = web.Response(status=upstream.status, body=payload)
                if "content-type" in upstream.headers:
                    reply.headers["content-type"] = upstream.headers["content-type"]
                return reply
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unavailable(f"MLServer did not answer: {exc}") from exc


class GrpcForwarder:
    """The gRPC half: ModelInfer, ModelReady, ModelMetadata forwarded to MLServer's gRPC port."""

    def __init__(self, gate: ReloadGate, *, mlserver_address: str) -> None:
        self._gate = gate
        self._channel = grpc.aio.insecure_channel(mlserver_address, options=[GRPC_RECEIVE_LIMIT])
        self._methods: dict[str, tuple[Any, Any, str]] = {
            "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse, "model_name"),
            "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse, "name"),
            "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse, "name"),
        }

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                self._make_handler(method, request_type, response_type, field),
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
            for method, (request_type, response_type, field) in self._methods.items()
        }
        return grpc.method_handlers_generic_handler(GRPC_SERVICE, handlers)

    async def close(self) -> None:
        await self._channel.close()

    def _make_handler(self, method: str, request_type: Any, response_type: Any, field: str) -> Any:
        call = self._channel.unary_unary(
            f"/{GRPC_SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            name = getattr(request, field)
            metadata = [(k, v) for k, v in context.invocation_metadata() or () if k == "x-request-id"]
            try:
                return await self._gate.run(name, lambda: call(request, metadata=metadata))
            except NotAssigned:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"Model {name} not found on this replica")
            except Unavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc), _RETRY_ELSEWHERE_METADATA)
            except grpc.aio.AioRpcError as exc:
                # MLServer unreachable: another replica may answer (Envoy retries on this header).
                elsewhere = _RETRY_ELSEWHERE_METADATA if exc.code() == grpc.StatusCode.UNAVAILABLE else ()
                await context.abort(exc.code(), exc.details() or "", elsewhere)

        return handle


@contextlib.asynccontextmanager
async def served_reload(
    gate: ReloadGate,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    mlserver_url: str,
    mlserver_grpc_address: str,
) -> AsyncIterator[None]:
    """Both halves of the reload listener, on ``host``, while the block runs."""
    rest = RestForwarder(gate, mlserver_url=mlserver_url)
    grpc_forwarder = GrpcForwarder(gate, mlserver_address=mlserver_grpc_address)
    runner = web.AppRunner(rest.app(), access_log=None)
    server = grpc.aio.server(options=[GRPC_RECEIVE_LIMIT])
    server.add_generic_rpc_handlers([grpc_forwarder.handler()])
    try:
        await runner.setup()
        await web.TCPSite(runner, host, http_port).start()
        if server.add_insecure_port(f"{host}:{grpc_port}") == 0:
            raise OSError(f"cannot listen on {host}:{grpc_port} (reload listener, gRPC)")
        await server.start()
        yield
    finally:
        await server.stop(grace=1.0)
        await runner.cleanup()
        await rest.close()
        await grpc_forwarder.close()
