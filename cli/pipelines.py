"""``pipeline load|unload|status|list|infer|inspect``, as seldon's ``pipeline`` commands.

load/unload/status/list talk to the scheduler; ``infer`` is ``model infer``'s machinery with the
pipeline's route; ``inspect`` (cli.inspect) reads the pipeline's Kafka topics.

``load -f`` reads Seldon's ``kind: Pipeline`` YAML (several documents per file) and validates every
pipeline with the model the scheduler applies before sending any. ``status -w [STATE]`` polls until
the latest version reaches STATE (default ``PipelineReady``).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from apis.mlops.scheduler import scheduler_pb2
from apis.names import PIPELINE_SUFFIX
from cli import pipeline_inspect
from cli.errors import CliError
from cli.infer import add_infer_arguments, call
from cli.output import JSON, TABLE, message_dict, print_json, print_message, print_table
from cli.resources import checked_name, read_pipeline_requests
from cli.rpc import SUBSCRIBER, is_not_found, scheduler, scheduler_endpoint

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

POLL_INTERVAL_S = 0.2
LIST_HINT = "'meshserve pipeline list' shows the pipelines that exist"
READY = "PipelineReady"
STATES = tuple(scheduler_pb2.PipelineVersionState.PipelineStatus.keys())


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    pipeline = subparsers.add_parser("pipeline", help="load, inspect and unload pipelines")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="COMMAND")

    load = commands.add_parser(
        "load", parents=common, help="load (or update) the Pipeline resources of a YAML file"
    )
    load.add_argument(
        "-f", "--file-path", dest="file", required=True, help="YAML file with Pipeline resources"
    )
    load.add_argument(
        "-r", "--show-request", action="store_true", help="print each request before sending it"
    )
    load.set_defaults(handler=load_pipelines)

    unload = commands.add_parser("unload", parents=common, help="unload a pipeline")
    unload.add_argument("name")
    unload.set_defaults(handler=unload_pipeline)

    status = commands.add_parser(
        "status", parents=common, help="show a pipeline's status, or wait for a state"
    )
    status.add_argument("name")
    status.add_argument(
        "-w",
        "--wait",
        nargs="?",
        const=READY,
        choices=STATES,
        metavar="STATE",
        help=f"wait until the latest version is in STATE (default {READY})",
    )
    status.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="(default: %(default)s)"
    )
    status.add_argument(
        "-a", "--all-versions", action="store_true", help="show every version, not the latest"
    )
    status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    status.set_defaults(handler=pipeline_status)

    listing = commands.add_parser("list", parents=common, help="list all pipelines")
    listing.add_argument("-o", "--output", choices=(TABLE, JSON), default=TABLE)
    listing.set_defaults(handler=list_pipelines)

    infer = commands.add_parser("infer", parents=common, help="call a pipeline through the inference host")
    infer.add_argument("name", help="the pipeline (the .pipeline suffix is added)")
    add_infer_arguments(infer)
    infer.set_defaults(handler=infer_pipeline, late_positional="payload")

    inspect = commands.add_parser(
        "inspect", parents=common, help="show a pipeline's messages on Kafka (step inputs and outputs)"
    )
    pipeline_inspect.register(inspect)
    inspect.set_defaults(handler=inspect_pipeline)


async def load_pipelines(args: argparse.Namespace) -> int:
    requests = read_pipeline_requests(args.file)  # everything is validated before anything is sent
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        for request in requests:
            if args.show_request:
                print_message(request)
            print_message(await stub.LoadPipeline(request, timeout=endpoint.timeout))
    return 0


async def infer_pipeline(args: argparse.Namespace) -> int:
    """Through Envoy with ``seldon-model: <p>.pipeline`` (seldon-pipelines.md §6.1) at
    ``/v2/models/<p>/infer``, the path the seldon CLI uses; Envoy routes on the header."""
    name = checked_name(args.name.removesuffix(PIPELINE_SUFFIX), kind="pipeline")
    return await call(args, route=name + PIPELINE_SUFFIX, path_name=name)


async def inspect_pipeline(args: argparse.Namespace) -> int:
    """The pipeline's steps come from the scheduler (an unknown pipeline fails here), the messages
    from Kafka (cli.pipeline_inspect)."""
    name = checked_name(pipeline_inspect.pipeline_name(args.reference), kind="pipeline")
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        status = await first_status(stub, name, endpoint.timeout)
    if not status.versions:
        raise CliError(f"pipeline {name!r} has no version; {LIST_HINT}")
    return await pipeline_inspect.inspect(args, status.versions[-1].pipeline)


async def unload_pipeline(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="pipeline")
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        try:
            response = await stub.UnloadPipeline(
                scheduler_pb2.UnloadPipelineRequest(name=name), timeout=endpoint.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if is_not_found(exc):
                raise CliError(f"{exc.details()}; {LIST_HINT}") from exc
            raise
    print_message(response)
    return 0


async def pipeline_status(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="pipeline")
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        if args.wait:
            response = await wait_for_state(
                stub, name, args.wait, wait_timeout=args.wait_timeout, rpc_timeout=endpoint.timeout
            )
            if args.all_versions:
                response = await first_status(stub, name, endpoint.timeout, all_versions=True)
        else:
            response = await first_status(stub, name, endpoint.timeout, all_versions=args.all_versions)
    if args.output == TABLE:
        print_pipeline_table([response])
    else:
        print_json(status_dict(response))
    return 0


async def list_pipelines(args: argparse.Namespace) -> int:
    endpoint = scheduler_endpoint(args)
    request = scheduler_pb2.PipelineStatusRequest(subscriberName=SUBSCRIBER)
    async with scheduler(endpoint) as stub:
        responses: list[scheduler_pb2.PipelineStatusResponse] = [
            response async for response in stub.PipelineStatus(request, timeout=endpoint.timeout)
        ]
    responses.sort(key=lambda response: response.pipelineName)
    if args.output == JSON:
        print_json([status_dict(response) for response in responses])
    else:
        print_pipeline_table(responses)
    return 0


async def first_status(
    stub: SchedulerAsyncStub, name: str, rpc_timeout: float, *, all_versions: bool = False
) -> scheduler_pb2.PipelineStatusResponse:
    """The scheduler's current status of ``name``; CliError if there is no such pipeline."""
    request = scheduler_pb2.PipelineStatusRequest(
        subscriberName=SUBSCRIBER, name=name, allVersions=all_versions
    )
    call = stub.PipelineStatus(request, timeout=rpc_timeout)
    try:
        response: scheduler_pb2.PipelineStatusResponse | None = await anext(aiter(call), None)
    except grpc.aio.AioRpcError as exc:
        if is_not_found(exc):
            raise CliError(f"pipeline {name!r} not found; {LIST_HINT}") from exc
        raise
    finally:
        call.cancel()  # the first answer is all we need; don't leave the stream open
    if response is None:
        raise CliError(f"pipeline {name!r} not found; {LIST_HINT}")
    return response


async def wait_for_state(
    stub: SchedulerAsyncStub, name: str, state: str, *, wait_timeout: float, rpc_timeout: float
) -> scheduler_pb2.PipelineStatusResponse:
    """Poll until the latest version is in ``state``; CliError after ``wait_timeout`` seconds naming
    the state it is in and why (the scheduler's reason)."""
    last: scheduler_pb2.PipelineStatusResponse | None = None
    try:
        async with asyncio.timeout(wait_timeout):
            while True:
                last = await first_status(stub, name, rpc_timeout)
                if last.versions and _status_name(last.versions[-1]) == state:
                    return last
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        now = "no version" if last is None or not last.versions else _describe(last.versions[-1])
        raise CliError(
            f"Pipeline wait status timeout: pipeline {name!r} is not {state} after {wait_timeout:g}s: {now}"
        ) from None


def status_dict(response: scheduler_pb2.PipelineStatusResponse) -> dict[str, Any]:
    """Seldon's shape (§8.1): protojson with defaults left out (``modelsReady`` absent while false);
    the response timestamp, which changes on every call, is left out too."""
    shown = message_dict(response)
    shown.pop("timestamp", None)
    return shown


def print_pipeline_table(responses: Iterable[scheduler_pb2.PipelineStatusResponse]) -> None:
    columns = ("pipeline", "version", "status", "models ready", "reason")
    print_table(columns, [row for response in responses for row in _rows(response)])


def _rows(response: scheduler_pb2.PipelineStatusResponse) -> list[Sequence[str]]:
    return [
        (
            response.pipelineName,
            str(item.state.pipelineVersion),
            _status_name(item),
            "true" if item.state.modelsReady else "false",
            item.state.reason,
        )
        for item in response.versions
    ]


def _status_name(item: scheduler_pb2.PipelineWithState) -> str:
    return scheduler_pb2.PipelineVersionState.PipelineStatus.Name(item.state.status)


def _describe(item: scheduler_pb2.PipelineWithState) -> str:
    reason = f" ({item.state.reason})" if item.state.reason else ""
    models = "models ready" if item.state.modelsReady else "models not ready"
    return f"version {item.state.pipelineVersion} is {_status_name(item)}{reason}, {models}"
