"""``model load|unload|status|list`` against the scheduler (the data-plane ones live in cli.infer)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import grpc

from apis.mlops.scheduler import scheduler_pb2
from cli import infer
from cli.errors import CliError
from cli.output import JSON, TABLE, print_json, print_message, print_messages, print_table
from cli.resources import checked_name, read_model_requests
from cli.rpc import SUBSCRIBER, is_not_found, scheduler, scheduler_endpoint

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

ModelState = scheduler_pb2.ModelStatus.ModelState
POLL_INTERVAL_S = 0.2
_TERMINATED = "ModelTerminated"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    model = subparsers.add_parser("model", help="load, inspect and call models")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")

    load = commands.add_parser("load", parents=common, help="load the Model resources of a YAML file")
    load.add_argument("-f", "--file-path", dest="file", required=True, help="YAML file with Model resources")
    load.add_argument(
        "-r", "--show-request", action="store_true", help="print each request before sending it"
    )
    load.set_defaults(handler=load_models)

    unload = commands.add_parser("unload", parents=common, help="unload a model")
    unload.add_argument("name")
    unload.set_defaults(handler=unload_model)

    status = commands.add_parser("status", parents=common, help="show a model's status, or wait for a state")
    status.add_argument("name")
    status.add_argument(
        "-w", "--wait", metavar="STATE", choices=ModelState.keys(), help="e.g. ModelAvailable"
    )
    status.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="(default: %(default)s)"
    )
    status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    status.set_defaults(handler=model_status)

    listing = commands.add_parser("list", parents=common, help="list all models")
    listing.add_argument("-o", "--output", choices=(TABLE, JSON), default=TABLE)
    listing.set_defaults(handler=list_models)

    infer.register(commands, common)


async def load_models(args: argparse.Namespace) -> int:
    requests = read_model_requests(args.file)  # everything is validated before anything is sent
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        for request in requests:
            if args.show_request:
                print_message(request)
            print_message(await stub.LoadModel(request, timeout=endpoint.timeout))
    return 0


async def unload_model(args: argparse.Namespace) -> int:
    request = scheduler_pb2.UnloadModelRequest(
        model=scheduler_pb2.ModelReference(name=checked_name(args.name))
    )
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        print_message(await stub.UnloadModel(request, timeout=endpoint.timeout))
    return 0


async def model_status(args: argparse.Namespace) -> int:
    name = checked_name(args.name)
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        if args.wait:
            await wait_for_state(
                stub, name, args.wait, wait_timeout=args.wait_timeout, rpc_timeout=endpoint.timeout
            )
            print_json({})
            return 0
        response = await first_status(stub, name, endpoint.timeout)
    if response is None:
        raise CliError(f"model {name!r} not found")
    if args.output == TABLE:
        print_model_table([response])
    else:
        print_message(response)
    return 0


async def list_models(args: argparse.Namespace) -> int:
    endpoint = scheduler_endpoint(args)
    request = scheduler_pb2.ModelStatusRequest(subscriberName=SUBSCRIBER, allVersions=False)
    async with scheduler(endpoint) as stub:
        responses: list[scheduler_pb2.ModelStatusResponse] = [
            response async for response in stub.ModelStatus(request, timeout=endpoint.timeout)
        ]
    responses.sort(key=lambda response: response.modelName)
    if args.output == JSON:
        print_messages(responses)
    else:
        print_model_table(responses)
    return 0


async def first_status(
    stub: SchedulerAsyncStub, name: str, rpc_timeout: float
) -> scheduler_pb2.ModelStatusResponse | None:
    request = scheduler_pb2.ModelStatusRequest(
        subscriberName=SUBSCRIBER, model=scheduler_pb2.ModelReference(name=name), allVersions=False
    )
    call = stub.ModelStatus(request, timeout=rpc_timeout)
    try:
        response: scheduler_pb2.ModelStatusResponse | None = await anext(aiter(call), None)
    finally:
        call.cancel()  # the first answer is all we need; don't leave the stream open
    return response


async def wait_for_state(
    stub: SchedulerAsyncStub, name: str, state: str, *, wait_timeout: float, rpc_timeout: float
) -> None:
    """Poll until the latest version is in ``state``; CliError after ``wait_timeout`` seconds."""
    try:
        async with asyncio.timeout(wait_timeout):
            # Polling, like seldon: a fresh status call each time sees the scheduler's latest view.
            while True:
                if await _in_state(stub, name, state, rpc_timeout):
                    return
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise CliError("Model wait status timeout") from None


async def _in_state(stub: SchedulerAsyncStub, name: str, state: str, rpc_timeout: float) -> bool:
    try:
        response = await first_status(stub, name, rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        if not is_not_found(exc):
            raise
        response = None
    if response is None:
        # The model may not be registered yet; once unloaded and forgotten it has terminated.
        return state == _TERMINATED
    latest = latest_version(response)
    return latest is not None and ModelState.Name(latest.state.state) == state


def latest_version(response: scheduler_pb2.ModelStatusResponse) -> scheduler_pb2.ModelVersionStatus | None:
    return max(response.versions, key=lambda version: version.version, default=None)


def print_model_table(responses: Iterable[scheduler_pb2.ModelStatusResponse]) -> None:
    columns = ("model", "version", "state", "server", "replicas", "reason")
    print_table(columns, [_model_row(response) for response in responses])


def _model_row(response: scheduler_pb2.ModelStatusResponse) -> Sequence[str]:
    latest = latest_version(response)
    if latest is None:
        return (response.modelName, "-", "-", "-", "-", "")
    desired = latest.modelDefn.deploymentSpec.replicas
    return (
        response.modelName,
        str(latest.version),
        ModelState.Name(latest.state.state),
        latest.serverName or "-",
        f"{latest.state.availableReplicas}/{desired}",
        latest.state.reason,
    )
