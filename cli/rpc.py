"""A scheduler connection for one command, with gRPC failures turned into CliError."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

# grpcio ships no type stubs; "unused-ignore" keeps this clean once stubs or an override appear.
import grpc

from apis import tls
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.scheduler import scheduler_pb2_grpc
from apis.tls import ClientTls, TlsSettingsError
from cli.errors import CliError

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

SUBSCRIBER = "meshserve-cli"
TLS_HINT = (
    " (a stack started with `meshserve up --tls` needs --tls-ca, --tls-cert and --tls-key, e.g. "
    "$MESHSERVE_HOME/tls/ca.pem, cli.pem and cli-key.pem)"
)
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
    tls: ClientTls | None = None  # mutual TLS (--tls-ca, --tls-cert, --tls-key); None: plain text


@asynccontextmanager
async def scheduler(endpoint: Endpoint) -> AsyncIterator[SchedulerAsyncStub]:
    """Yield a stub on a fresh channel; any RpcError raised inside becomes a CliError."""
    try:
        channel = tls.channel(endpoint.host, endpoint.tls, options=[GRPC_RECEIVE_LIMIT])
    except TlsSettingsError as exc:
        raise CliError(f"{exc}; check --tls-ca, --tls-cert and --tls-key") from exc
    async with channel:
        try:
            yield scheduler_pb2_grpc.SchedulerStub(channel)
        except grpc.aio.AioRpcError as exc:
            raise scheduler_error(exc, endpoint) from exc


def scheduler_error(exc: grpc.aio.AioRpcError, endpoint: Endpoint) -> CliError:
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = "" if endpoint.tls else TLS_HINT
        return CliError(f"cannot reach scheduler at {endpoint.host}: {details}{hint}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"cannot reach scheduler at {endpoint.host}: no answer within {endpoint.timeout:g}s")
    if code in _USER_ERRORS:
        return CliError(str(details))
    return CliError(f"{code.name}: {details}")


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.NOT_FOUND


def scheduler_endpoint(args: argparse.Namespace) -> Endpoint:
    try:
        client_tls = ClientTls.from_settings(
            getattr(args, "tls_ca", None), getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
        )
    except TlsSettingsError as exc:
        raise CliError(f"{exc} (or MESHSERVE_CLI_TLS_*)") from exc
    return Endpoint(host=args.scheduler_host, timeout=args.timeout, tls=client_tls)
