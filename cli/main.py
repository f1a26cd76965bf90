"""``meshserve``: the command line, mirroring Seldon Core 2's ``seldon`` CLI.

Connection flags come from ``cli.config.CliConfig`` (env ``MESHSERVE_CLI_*``). Exit codes: 0 on
success, 1 on any error (printed as ``Error: <message>`` on stderr), 2 on usage errors (argparse),
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

from apis import settings
from cli import experiments, models, pipelines, servers, stack
from cli.config import ENV_PREFIX, CliConfig
from cli.errors import CliError
from cli.output import print_error

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    # Connection flags are accepted both before and after the subcommand, as with seldon's
    # persistent flags; SUPPRESS keeps a leaf parser from overwriting a value given earlier.
    common = argparse.ArgumentParser(add_help=False)
    settings.add_flags(common, CliConfig, prefix=ENV_PREFIX, env=os.environ, suppress=True)
    parser = argparse.ArgumentParser(
        prog="meshserve",
        parents=[common],
        description="Load, inspect and call models, experiments and pipelines on a meshserve stack.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.register(subparsers, [common])
    servers.register(subparsers, [common])
    experiments.register(subparsers, [common])
    pipelines.register(subparsers, [common])
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
    try:
        defaults = settings.env_defaults(CliConfig, prefix=ENV_PREFIX, env=os.environ)
    except settings.SettingError as exc:
        parser.error(str(exc))
    for name, value in defaults.items():
        if not hasattr(args, name):
            setattr(args, name, value)
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


if __name__ == "__main__":
    sys.exit(main())
