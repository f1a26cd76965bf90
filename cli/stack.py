"""``up``, ``down`` and ``status`` for the local stack; parsing only, the work is in ``stack.commands``.

``up``'s flags derive from ``StackConfig`` (env ``MESHSERVE_STACK_*``); ``--home`` is the stack's
state folder for all three (env ``MESHSERVE_HOME``).
"""

from __future__ import annotations

import argparse
import os

from apis import settings
from stack.config import ENV_PREFIX, HOME_ENV, StackConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    home = os.environ.get(HOME_ENV, "./.meshserve")
    home_help = f"state folder of the local stack [env {HOME_ENV}, default ./.meshserve]"

    up = subparsers.add_parser(
        "up", help="start the local stack", description="Every flag falls back to the variable shown."
    )
    up.add_argument("-d", "--detach", action="store_true", help="return once the stack is up")
    up.add_argument("--home", default=home, help=home_help)
    settings.add_flags(up, StackConfig, prefix=ENV_PREFIX, env=os.environ)
    up.add_argument("--no-demo", action="store_true", help="don't load the demo iris model")
    up.set_defaults(stack_command="up")

    down = subparsers.add_parser("down", help="stop the local stack")
    down.add_argument("--home", default=home, help=home_help)
    down.set_defaults(stack_command="down")

    status = subparsers.add_parser("status", help="show the local stack's processes")
    status.add_argument("--home", default=home, help=home_help)
    status.set_defaults(stack_command="status")


def run_stack_command(args: argparse.Namespace) -> int:
    # Imported here: only these commands need the process management the stack pulls in.
    from stack import commands

    command = {"up": commands.up, "down": commands.down, "status": commands.status}[args.stack_command]
    return command(args)
