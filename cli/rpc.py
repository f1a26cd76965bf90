"""A scheduler connection for one command, with gRPC failures turned into CliError."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

# grpcio ships no type stubs; "unused-ignore" keeps this clean once stubs or an override appear.
import grpc

from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.scheduler import scheduler_pb2_grpc
from cli.errors import CliError

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

SUBSCRIBER = "meshserve-cli"
# The scheduler uses these codes for the user's own mistakes; its message says it all.
_USER_ERRORS = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@dataclass(frozen=True)
class Endpoint:
    host: str
    timeout: float


@asynccontextmanager
async def scheduler(endpoint: Endpoint) -> AsyncIterator[SchedulerAsyncStub]:
    """Yield a stub on a fresh channel; any RpcError raised inside becomes a CliError."""
    async with grpc.aio.insecure_channel(endpoint.host, options=[GRPC_RECEIVE_LIMIT]) as channel:
        try:
            yield scheduler_pb2_grpc.SchedulerStub(channel)
        except grpc.aio.AioRpcError as exc:
            raise scheduler_error(exc, endpoint) from exc


def scheduler_error(exc: grpc.aio.AioRpcError, endpoint: Endpoint) -> CliError:
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(f"cannot reach scheduler at {endpoint.host}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"cannot reach scheduler at {endpoint.host}: no answer within {endpoint.timeout:g}s")
    if code in _USER_ERRORS:
        return CliError(str(details))
    return CliError(f"{code.name}: {details}")


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.NOT_FOUND


def scheduler_endpoint(args: argparse.Namespace) -> Endpoint:
    return Endpoint(host=args.scheduler_host, timeout=args.timeout)
