"""``up``, ``down`` and ``status`` for the local stack; parsing only, the work is in ``stack.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from typing import cast

from cli.output import print_error

StackCommand = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    home = os.environ.get("MESHSERVE_HOME", "./.meshserve")
    home_help = "state folder of the local stack (env MESHSERVE_HOME, default: %(default)s)"

    up = subparsers.add_parser("up", help="start the local stack")
    up.add_argument("-d", "--detach", action="store_true", help="return once the stack is up")
    up.add_argument("--home", default=home, help=home_help)
    up.add_argument(
        "--http-port", type=int, default=9000, help="inference entry point (default: %(default)s)"
    )
    up.add_argument("--xds-port", type=int, default=9002, help="(default: %(default)s)")
    up.add_argument("--scheduler-port", type=int, default=9004, help="(default: %(default)s)")
    up.add_argument("--agent-port", type=int, default=9005, help="(default: %(default)s)")
    up.add_argument("--envoy-admin-port", type=int, default=9901, help="(default: %(default)s)")
    up.add_argument("--mlserver-http-port", type=int, default=8080, help="(default: %(default)s)")
    up.add_argument("--mlserver-grpc-port", type=int, default=9500, help="(default: %(default)s)")
    up.add_argument("--mlserver-metrics-port", type=int, default=8082, help="(default: %(default)s)")
    up.add_argument("--no-demo", action="store_true", help="don't load the demo iris model")
    up.set_defaults(stack_command="up")

    down = subparsers.add_parser("down", help="stop the local stack")
    down.add_argument("--home", default=home, help=home_help)
    down.set_defaults(stack_command="down")

    status = subparsers.add_parser("status", help="show the local stack's processes")
    status.add_argument("--home", default=home, help=home_help)
    status.set_defaults(stack_command="status")


def run_stack_command(args: argparse.Namespace) -> int:
    # Imported lazily: the stack pulls in process management the other commands never need.
    try:
        commands = importlib.import_module("stack.commands")
    except ImportError as exc:
        print_error(f"the local stack is not available: cannot import stack.commands ({exc})")
        return 1
    command = cast(StackCommand, getattr(commands, args.stack_command))
    return command(args)
