"""``meshserve``: the command line, mirroring Seldon Core 2's ``seldon`` CLI.

Exit codes: 0 on success, 1 on any error (printed as ``Error: <message>`` on stderr), 2 on usage
errors (argparse), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from cli import models, servers, stack
from cli.errors import CliError
from cli.output import print_error

Handler = Callable[[argparse.Namespace], Awaitable[int]]

DEFAULT_SCHEDULER_HOST = "127.0.0.1:9004"
DEFAULT_INFERENCE_HOST = "127.0.0.1:9000"
DEFAULT_TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    # Connection flags are accepted both before and after the subcommand, as with seldon's
    # persistent flags; SUPPRESS keeps a leaf parser from overwriting a value given earlier.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--scheduler-host",
        default=argparse.SUPPRESS,
        help=f"env MESHSERVE_SCHEDULER_HOST, default {DEFAULT_SCHEDULER_HOST}",
    )
    common.add_argument(
        "--inference-host",
        default=argparse.SUPPRESS,
        help=f"env MESHSERVE_INFERENCE_HOST, default {DEFAULT_INFERENCE_HOST}",
    )
    common.add_argument(
        "--timeout",
        type=_seconds,
        default=argparse.SUPPRESS,
        help=f"per-call deadline in seconds, default {DEFAULT_TIMEOUT_S:g}",
    )
    parser = argparse.ArgumentParser(
        prog="meshserve", parents=[common], description="Load, inspect and call models on a meshserve stack."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.register(subparsers, [common])
    servers.register(subparsers, [common])
    stack.register(subparsers)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    # argparse fills an optional positional before later options are seen, so in
    # "model infer iris -i 5 '{...}'" (how seldon is used) the payload arrives as an extra.
    late = getattr(args, "late_positional", None)
    if late and getattr(args, late) is None and len(extras) == 1 and not extras[0].startswith("-"):
        setattr(args, late, extras.pop())
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if not hasattr(args, "scheduler_host"):
        args.scheduler_host = os.environ.get("MESHSERVE_SCHEDULER_HOST") or DEFAULT_SCHEDULER_HOST
    if not hasattr(args, "inference_host"):
        args.inference_host = os.environ.get("MESHSERVE_INFERENCE_HOST") or DEFAULT_INFERENCE_HOST
    if not hasattr(args, "timeout"):
        args.timeout = DEFAULT_TIMEOUT_S
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # usage errors and --help; return the code instead of exiting
        return exc.code if isinstance(exc.code, int) else 1
    try:
        if hasattr(args, "stack_command"):
            return stack.run_stack_command(args)
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


async def run(args: argparse.Namespace) -> int:
    """Run a parsed (non-stack) command inside the caller's event loop; used by main and tests."""
    handler: Handler = args.handler
    try:
        return await handler(args)
    except CliError as exc:
        print_error(str(exc))
        return 1


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


if __name__ == "__main__":
    sys.exit(main())
