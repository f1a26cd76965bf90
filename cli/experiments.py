"""``experiment start|stop|status|list`` against the scheduler, as seldon's ``experiment`` commands.

Traffic to an experiment goes through ``model infer`` (``--header seldon-model=<name>.experiment``,
or the default model's own name while the experiment is active).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from apis.mlops.scheduler import scheduler_pb2
from cli.errors import CliError
from cli.output import JSON, TABLE, print_json, print_message, print_table
from cli.resources import checked_name, read_experiment_requests
from cli.rpc import SUBSCRIBER, is_not_found, scheduler, scheduler_endpoint

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

POLL_INTERVAL_S = 0.2
LIST_HINT = "'meshserve experiment list' shows the experiments that exist"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    experiment = subparsers.add_parser("experiment", help="start, inspect and stop experiments")
    commands = experiment.add_subparsers(dest="experiment_command", required=True, metavar="COMMAND")

    start = commands.add_parser(
        "start", parents=common, help="start (or edit) the Experiment resources of a YAML file"
    )
    start.add_argument(
        "-f", "--file-path", dest="file", required=True, help="YAML file with Experiment resources"
    )
    start.add_argument(
        "-r", "--show-request", action="store_true", help="print each request before sending it"
    )
    start.set_defaults(handler=start_experiments)

    stop = commands.add_parser("stop", parents=common, help="stop an experiment")
    stop.add_argument("name")
    stop.set_defaults(handler=stop_experiment)

    status = commands.add_parser("status", parents=common, help="show an experiment's status, or wait for it")
    status.add_argument("name")
    status.add_argument("-w", "--wait", action="store_true", help="wait until the experiment is active")
    status.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="(default: %(default)s)"
    )
    status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    status.set_defaults(handler=experiment_status)

    listing = commands.add_parser("list", parents=common, help="list all experiments")
    listing.add_argument("-o", "--output", choices=(TABLE, JSON), default=TABLE)
    listing.set_defaults(handler=list_experiments)


async def start_experiments(args: argparse.Namespace) -> int:
    requests = read_experiment_requests(args.file)  # everything is validated before anything is sent
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        for request in requests:
            if args.show_request:
                print_message(request)
            print_message(await stub.StartExperiment(request, timeout=endpoint.timeout))
    return 0


async def stop_experiment(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="experiment")
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        try:
            response = await stub.StopExperiment(
                scheduler_pb2.StopExperimentRequest(name=name), timeout=endpoint.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if is_not_found(exc):
                raise _not_found(name) from exc
            raise
    print_message(response)
    return 0


async def experiment_status(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="experiment")
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        if args.wait:
            response = await wait_until_active(
                stub, name, wait_timeout=args.wait_timeout, rpc_timeout=endpoint.timeout
            )
        else:
            response = await first_status(stub, name, endpoint.timeout)
    if args.output == TABLE:
        print_experiment_table([response])
    else:
        print_json(status_dict(response))
    return 0


async def list_experiments(args: argparse.Namespace) -> int:
    endpoint = scheduler_endpoint(args)
    request = scheduler_pb2.ExperimentStatusRequest(subscriberName=SUBSCRIBER)
    async with scheduler(endpoint) as stub:
        responses: list[scheduler_pb2.ExperimentStatusResponse] = [
            response async for response in stub.ExperimentStatus(request, timeout=endpoint.timeout)
        ]
    responses.sort(key=lambda response: response.experimentName)
    if args.output == JSON:
        print_json([status_dict(response) for response in responses])
    else:
        print_experiment_table(responses)
    return 0


async def first_status(
    stub: SchedulerAsyncStub, name: str, rpc_timeout: float
) -> scheduler_pb2.ExperimentStatusResponse:
    """The scheduler's current status of ``name``; CliError if there is no such experiment."""
    request = scheduler_pb2.ExperimentStatusRequest(subscriberName=SUBSCRIBER, name=name)
    call = stub.ExperimentStatus(request, timeout=rpc_timeout)
    try:
        response: scheduler_pb2.ExperimentStatusResponse | None = await anext(aiter(call), None)
    except grpc.aio.AioRpcError as exc:
        if is_not_found(exc):
            raise _not_found(name) from exc
        raise
    finally:
        call.cancel()  # the first answer is all we need; don't leave the stream open
    if response is None:
        raise _not_found(name)
    return response


async def wait_until_active(
    stub: SchedulerAsyncStub, name: str, *, wait_timeout: float, rpc_timeout: float
) -> scheduler_pb2.ExperimentStatusResponse:
    """Poll until the experiment is active; CliError after ``wait_timeout`` seconds, naming what is
    still missing (the scheduler's status description)."""
    last: scheduler_pb2.ExperimentStatusResponse | None = None
    try:
        async with asyncio.timeout(wait_timeout):
            # Polling, like model status -w: each call sees the scheduler's latest view.
            while True:
                last = await first_status(stub, name, rpc_timeout)
                if last.active:
                    return last
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        reason = last.statusDescription if last is not None and last.statusDescription else "no status yet"
        raise CliError(
            f"Experiment wait status timeout: experiment {name!r} is not active after "
            f"{wait_timeout:g}s: {reason} (check its models with 'meshserve model list')"
        ) from None


def status_dict(response: scheduler_pb2.ExperimentStatusResponse) -> dict[str, Any]:
    """Seldon's shape: every field, ``false`` included, and ``kubernetesMeta`` always present."""
    shown = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    shown.setdefault("kubernetesMeta", {})
    return shown


def print_experiment_table(responses: Iterable[scheduler_pb2.ExperimentStatusResponse]) -> None:
    columns = ("experiment", "active", "candidates ready", "mirror ready", "description")
    print_table(columns, [_row(response) for response in responses])


def _row(response: scheduler_pb2.ExperimentStatusResponse) -> Sequence[str]:
    return (
        response.experimentName,
        _yes_no(response.active),
        _yes_no(response.candidatesReady),
        _yes_no(response.mirrorReady),
        response.statusDescription,
    )


def _yes_no(value: bool) -> str:
    return "true" if value else "false"


def _not_found(name: str) -> CliError:
    return CliError(f"experiment {name!r} not found; {LIST_HINT}")
