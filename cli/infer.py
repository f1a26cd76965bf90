"""``model infer`` and ``model metadata``: data-plane calls through the inference host (Envoy)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from apis.names import EXPERIMENT_SUFFIX
from cli.errors import CliError
from cli.output import JSON, TABLE, print_json, print_table
from cli.payload import infer_request, parse_json
from cli.resources import checked_name
from cli.routes import ROUTE_HEADER, count_routes, format_route_map
from cli.transport import GrpcClient, InferClient, Reply, RestClient

REST = "rest"
GRPC = "grpc"


def register(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: list[argparse.ArgumentParser]
) -> None:
    infer = commands.add_parser("infer", parents=common, help="call a model through the inference host")
    infer.add_argument("name", help="a model, or <experiment>.experiment")
    add_infer_arguments(infer)
    infer.set_defaults(handler=infer_model, late_positional="payload")

    metadata = commands.add_parser("metadata", parents=common, help="show a model's OIP metadata")
    metadata.add_argument("name")
    metadata.add_argument("-o", "--output", choices=(JSON, TABLE), default=JSON)
    metadata.set_defaults(handler=model_metadata)


def add_infer_arguments(infer: argparse.ArgumentParser) -> None:
    """The flags ``model infer`` and ``pipeline infer`` share (seldon's ``infer`` flags)."""
    infer.add_argument("payload", nargs="?", help="request JSON (or use --file-path)")
    infer.add_argument("-f", "--file-path", help="read the request JSON from this file")
    infer.add_argument("--inference-mode", choices=(REST, GRPC), default=REST)
    infer.add_argument("-i", "--iterations", type=_positive_int, default=1, metavar="N")
    infer.add_argument("--show-headers", action="store_true", help="print response headers to stderr")
    infer.add_argument(
        "--header",
        action="append",
        type=_header,
        default=[],
        metavar="K=V",
        help="extra request header; seldon-model=<experiment>.experiment sends the call to an experiment",
    )
    infer.add_argument("-s", "--sticky-session", action="store_true", help="resend the last x-seldon-route")
    infer.add_argument("--authority", help="Host / :authority to send")


async def infer_model(args: argparse.Namespace) -> int:
    name = route_name(args.name)
    return await call(args, route=name, path_name=name)


async def call(args: argparse.Namespace, *, route: str, path_name: str) -> int:
    """Send the payload to ``seldon-model: route`` (REST path ``/v2/models/<path_name>/infer``)
    ``-i`` times and print the answer; shared by ``model infer`` and ``pipeline infer``."""
    client = _client(args, route, path_name, _payload(args))
    try:
        return await run_calls(
            client,
            iterations=args.iterations,
            headers=args.header,
            sticky=args.sticky_session,
            show_headers=args.show_headers,
        )
    finally:
        await client.close()


async def run_calls(
    client: InferClient,
    *,
    iterations: int,
    headers: Sequence[tuple[str, str]],
    sticky: bool,
    show_headers: bool,
) -> int:
    """Make the calls; one call prints its body, several print the route-count map."""
    routes: Counter[str] = Counter()
    failures = 0
    last_error = ""
    route: str | None = None
    for _ in range(iterations):
        extra = list(headers)
        if sticky and route:
            extra = [(key, value) for key, value in extra if key.lower() != ROUTE_HEADER]
            extra.append((ROUTE_HEADER, route))
        reply = await client.infer(extra)
        if show_headers:
            print_headers(reply)
        if not reply.ok:
            failures += 1
            last_error = reply.error
            continue
        route = reply.route or route
        count_routes(routes, reply.route)
        if iterations == 1:
            print(reply.body, flush=True)
    if iterations > 1:
        print(f"Success: {format_route_map(routes)}", flush=True)
    if failures == 1 and iterations == 1:
        raise CliError(last_error)
    if failures:
        raise CliError(f"{failures} of {iterations} calls failed; last error: {last_error}")
    return 0


def print_headers(reply: Reply) -> None:
    if reply.trailers is None:
        for key, value in reply.headers:
            print(f"{key}: {value}", file=sys.stderr)
        return
    print("Initial metadata:", file=sys.stderr)
    for key, value in reply.headers:
        print(f"  {key}: {value}", file=sys.stderr)
    print("Trailing metadata:", file=sys.stderr)
    for key, value in reply.trailers:
        print(f"  {key}: {value}", file=sys.stderr)


async def model_metadata(args: argparse.Namespace) -> int:
    name = checked_name(args.name)
    client = RestClient(host=args.inference_host, model=name, body=b"", timeout=args.timeout, authority=None)
    try:
        reply = await client.metadata()
    finally:
        await client.close()
    if not reply.ok:
        raise CliError(reply.error)
    metadata = parse_json(reply.body)
    if args.output == JSON:
        print_json(metadata)
    else:
        _print_tensors(metadata)
    return 0


def _print_tensors(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise CliError("model metadata is not a JSON object")
    rows = []
    for kind in ("inputs", "outputs"):
        for tensor in metadata.get(kind) or []:
            shape = tensor.get("shape", [])
            rows.append((kind[:-1], str(tensor.get("name", "")), str(tensor.get("datatype", "")), str(shape)))
    print_table(("tensor", "name", "datatype", "shape"), rows)


def _client(args: argparse.Namespace, route: str, path_name: str, payload: str) -> InferClient:
    host: str = args.inference_host
    timeout: float = args.timeout
    authority: str | None = args.authority
    if args.inference_mode == GRPC:
        request = infer_request(payload, path_name)
        return GrpcClient(host=host, model=route, request=request, timeout=timeout, authority=authority)
    parse_json(payload)  # fail before connecting, with the same message as gRPC mode
    body = payload.encode()
    return RestClient(
        host=host, model=route, body=body, timeout=timeout, authority=authority, path_name=path_name
    )


def _payload(args: argparse.Namespace) -> str:
    if (args.payload is None) == (args.file_path is None):
        raise CliError("give the request JSON either as an argument or with --file-path, not both")
    if args.payload is not None:
        payload: str = args.payload
        return payload
    try:
        with open(args.file_path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise CliError(f"{args.file_path}: {exc.strerror or exc}") from exc


def route_name(name: str) -> str:
    """A model name, or ``<experiment>.experiment`` (the endpoint every experiment has)."""
    if name.endswith(EXPERIMENT_SUFFIX):
        checked_name(name.removesuffix(EXPERIMENT_SUFFIX), kind="experiment")
        return name
    return checked_name(name)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _header(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not K=V")
    return key.strip(), value
