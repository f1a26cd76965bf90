"""The detached supervisor started by ``meshserve up --detach`` (not meant to be run by hand)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from scheduler.logs import configure_logging
from stack.config import StackConfig, default_home
from stack.supervisor import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m stack")
    parser.add_argument("--home", default=str(default_home()))
    parser.add_argument("--http-port", type=int, default=9000)
    parser.add_argument("--xds-port", type=int, default=9002)
    parser.add_argument("--scheduler-port", type=int, default=9004)
    parser.add_argument("--agent-port", type=int, default=9005)
    args = parser.parse_args()
    configure_logging()
    config = StackConfig(
        home=Path(args.home).resolve(),
        http_port=args.http_port,
        xds_port=args.xds_port,
        scheduler_port=args.scheduler_port,
        agent_port=args.agent_port,
    )
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
