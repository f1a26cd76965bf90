"""``server list|status`` and ``scheduler status``."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from apis.mlops.scheduler import scheduler_pb2
from cli.errors import CliError
from cli.output import JSON, TABLE, human_bytes, print_message, print_messages, print_table
from cli.resources import ServerManifest, checked_name, read_server_manifests
from cli.rpc import SUBSCRIBER, scheduler, scheduler_endpoint
from stack.server_spec import server_spec_file, spec_text

HOME_HELP = "the local stack's state folder, whose controller starts the replicas (env MESHSERVE_HOME)"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    server = subparsers.add_parser("server", help="declare and inspect inference servers")
    commands = server.add_subparsers(dest="server_command", required=True, metavar="COMMAND")
    load = commands.add_parser("load", parents=common, help="declare servers from a Seldon Server YAML file")
    load.add_argument("-f", "--file", required=True, metavar="FILE")
    load.add_argument("--home", default=os.environ.get("MESHSERVE_HOME", "./.meshserve"), help=HOME_HELP)
    load.set_defaults(handler=load_servers)
    unload = commands.add_parser("unload", parents=common, help="scale a server to 0 and forget it")
    unload.add_argument("name")
    unload.set_defaults(handler=unload_server)
    listing = commands.add_parser("list", parents=common, help="list servers")
    listing.add_argument("-o", "--output", choices=(TABLE, JSON), default=TABLE)
    listing.set_defaults(handler=list_servers)
    status = commands.add_parser("status", parents=common, help="show one server's status")
    status.add_argument("name")
    status.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    status.add_argument("-w", "--wait", action="store_true", help="wait until every declared replica is up")
    status.add_argument(
        "--wait-timeout", type=float, default=120.0, metavar="S", help="(default: %(default)s)"
    )
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


async def load_servers(args: argparse.Namespace) -> int:
    """Leave each replica spec for the local stack's controller, then declare the servers."""
    manifests = read_server_manifests(args.file)
    undo = _write_specs(Path(args.home), manifests)
    request = scheduler_pb2.ServerNotifyRequest(servers=[m.notify for m in manifests])
    endpoint = scheduler_endpoint(args)
    try:
        async with scheduler(endpoint) as stub:
            print_message(await stub.ServerNotify(request, timeout=endpoint.timeout))
    except BaseException:
        undo()  # the scheduler refused: leave no trace
        raise
    return 0


def _write_specs(home: Path, manifests: list[ServerManifest]) -> Callable[[], None]:
    """Write each server's replica spec; returns a function that puts the old files back."""
    previous: dict[Path, str | None] = {}
    for manifest in manifests:
        path = server_spec_file(home.resolve(), manifest.notify.name)
        previous[path] = path.read_text() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(spec_text(manifest))

    def undo() -> None:
        for path, text in previous.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)

    return undo


async def unload_server(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="server")
    request = scheduler_pb2.ServerNotifyRequest(
        servers=[scheduler_pb2.ServerNotify(name=name, expectedReplicas=0, shared=True)]
    )
    endpoint = scheduler_endpoint(args)
    async with scheduler(endpoint) as stub:
        if name not in {r.serverName for r in await _server_statuses(args, None)}:
            raise CliError(f"server {name!r} not found")
        print_message(await stub.ServerNotify(request, timeout=endpoint.timeout))
    return 0


async def _wait_ready(args: argparse.Namespace, name: str) -> None:
    try:
        async with asyncio.timeout(args.wait_timeout):
            while True:
                found = [r for r in await _server_statuses(args, None) if r.serverName == name]
                if (
                    found
                    and found[0].expectedReplicas >= 0
                    and (found[0].availableReplicas == found[0].expectedReplicas)
                ):
                    return
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise CliError("Server wait status timeout") from None


async def server_status(args: argparse.Namespace) -> int:
    name = checked_name(args.name, kind="server")
    if args.wait:
        await _wait_ready(args, name)
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
    columns = ("server", "replicas", "loaded models", "memory free/capacity", "overcommit")
    print_table(columns, [_server_row(response) for response in responses])


def _server_row(response: scheduler_pb2.ServerStatusResponse) -> Sequence[str]:
    # Capacity includes the overcommit headroom, which the agents' free memory also counts.
    capacity = sum(r.totalMemoryBytes * (100 + r.overCommitPercentage) // 100 for r in response.resources)
    available = sum(replica.availableMemoryBytes for replica in response.resources)
    overcommit = sorted({f"{replica.overCommitPercentage}%" for replica in response.resources})
    declared = response.expectedReplicas >= 0  # -1: no Server resource, just agents that registered
    replicas = (
        f"{response.availableReplicas}/{response.expectedReplicas}"
        if declared
        else str(response.availableReplicas)
    )
    return (
        response.serverName,
        replicas,
        str(response.numLoadedModelReplicas),
        f"{human_bytes(available)}/{human_bytes(capacity)}",
        ",".join(overcommit) or "-",
    )
