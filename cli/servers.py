"""``server list|status`` and ``scheduler status``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from apis.mlops.scheduler import scheduler_pb2
from cli.errors import CliError
from cli.output import JSON, TABLE, human_bytes, print_message, print_messages, print_table
from cli.resources import checked_name
from cli.rpc import SUBSCRIBER, scheduler, scheduler_endpoint


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    server = subparsers.add_parser("server", help="inspect inference servers")
    commands = server.add_subparsers(dest="server_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=common, help="list servers")
    listing.add_argument("-o", "--output", choices=(TABLE, JSON), default=TABLE)
    listing.set_defaults(handler=list_servers)
    status = commands.add_parser("status", parents=common, help="show one server's status")
    status.add_argument("name")
    status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    status.set_defaults(handler=server_status)

    sched = subparsers.add_parser("scheduler", help="inspect the scheduler")
    sched_commands = sched.add_subparsers(dest="scheduler_command", required=True, metavar="COMMAND")
    sched_status = sched_commands.add_parser("status", parents=common, help="show the scheduler's version")
    sched_status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    sched_status.set_defaults(handler=scheduler_status)


async def list_servers(args: argparse.Namespace) -> int:
    responses = await _server_statuses(args, None)
    responses.sort(key=lambda response: response.serverName)
    if args.output == JSON:
        print_messages(responses)
    else:
        print_server_table(responses)
    return 0


async def server_status(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="server")
    responses = [response for response in await _server_statuses(args, name) if response.serverName == name]
    if not responses:
        raise CliError(f"server {name!r} not found")
    if args.output == TABLE:
        print_server_table(responses[:1])
    else:
        print_message(responses[0])
    return 0


async def scheduler_status(args: argparse.Namespace) -> int:
    endpoint = scheduler_endpoint(args)
    request = scheduler_pb2.SchedulerStatusRequest(subscriberName=SUBSCRIBER)
    async with scheduler(endpoint) as stub:
        response: scheduler_pb2.SchedulerStatusResponse = await stub.SchedulerStatus(
            request, timeout=endpoint.timeout
        )
    if args.output == TABLE:
        print_table(("application version",), [(response.applicationVersion,)])
    else:
        print_message(response)
    return 0


async def _server_statuses(
    args: argparse.Namespace, name: str | None
) -> list[scheduler_pb2.ServerStatusResponse]:
    endpoint = scheduler_endpoint(args)
    request = scheduler_pb2.ServerStatusRequest(subscriberName=SUBSCRIBER)
    if name is not None:
        request.name = name
    async with scheduler(endpoint) as stub:
        return [response async for response in stub.ServerStatus(request, timeout=endpoint.timeout)]


def print_server_table(responses: Iterable[scheduler_pb2.ServerStatusResponse]) -> None:
    columns = ("server", "replicas", "loaded models", "memory free/total", "overcommit")
    print_table(columns, [_server_row(response) for response in responses])


def _server_row(response: scheduler_pb2.ServerStatusResponse) -> Sequence[str]:
    total = sum(replica.totalMemoryBytes for replica in response.resources)
    available = sum(replica.availableMemoryBytes for replica in response.resources)
    overcommit = sorted({f"{replica.overCommitPercentage}%" for replica in response.resources})
    return (
        response.serverName,
        f"{response.availableReplicas}/{response.expectedReplicas}",
        str(response.numLoadedModelReplicas),
        f"{human_bytes(available)}/{human_bytes(total)}",
        ",".join(overcommit) or "-",
    )
