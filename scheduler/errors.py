"""Domain errors and the one table that turns them into gRPC status codes, for every servicer.

Use cases raise typed errors; :class:`StatusMapping` (a server interceptor) answers them with the
code from :data:`STATUS_CODES` and the error's message, so no servicer repeats a try/except. Errors
not in the table are left to grpc, which answers ``UNKNOWN`` without leaking details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from apis.routing import InvalidWeights
from apis.validation import InvalidResource


class NotFound(LookupError):
    """A named resource (model, server replica, experiment, …) does not exist."""


class ReplicaTaken(Exception):
    """A server replica is held by another agent's live stream (scheduler/membership.py)."""


STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidResource: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidWeights: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ReplicaTaken: grpc.StatusCode.ALREADY_EXISTS,
    TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_MAPPED = tuple(STATUS_CODES)

Context = grpc.aio.ServicerContext[Any, Any]


def status_of(error: Exception) -> grpc.StatusCode:
    return next(code for kind, code in STATUS_CODES.items() if isinstance(error, kind))


class StatusMapping(grpc.aio.ServerInterceptor):
    """Wraps each RPC's behaviour so mapped domain errors end the call with their status."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        # grpc's RpcMethodHandler is a namedtuple at run time; its stubs do not say so.
        handler: Any = await continuation(details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary(handler.unary_unary))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_unary(handler.stream_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(handler.unary_stream))
        return handler._replace(stream_stream=_streaming(handler.stream_stream))


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def mapped(request: Any, context: Context) -> Any:
        try:
            return await behaviour(request, context)
        except _MAPPED as error:
            await context.abort(status_of(error), str(error))

    return mapped


def _streaming(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def mapped(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except _MAPPED as error:
            await context.abort(status_of(error), str(error))

    return mapped
