"""``up``, ``down`` and ``status`` for the local stack; parsing only, the work is in ``stack.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from typing import cast

from cli.output import print_error
from stack.config import port_defaults

StackCommand = Callable[[argparse.Namespace], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    home = os.environ.get("MESHSERVE_HOME", "./.meshserve")
    home_help = "state folder of the local stack (env MESHSERVE_HOME, default: %(default)s)"

    up = subparsers.add_parser("up", help="start the local stack")
    up.add_argument("-d", "--detach", action="store_true", help="return once the stack is up")
    up.add_argument("--home", default=home, help=home_help)
    for setting, default in port_defaults().items():
        up.add_argument(
            f"--{setting.replace('_', '-')}", type=int, default=default, help="(default: %(default)s)"
        )
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
