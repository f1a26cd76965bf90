"""The detached supervisor started by ``meshserve up --detach`` (not meant to be run by hand)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from apis.logs import configure_logging
from stack.config import StackConfig
from stack.supervisor import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m stack")
    parser.add_argument("--home", required=True, help="state folder holding config.json")
    args = parser.parse_args()
    config = StackConfig.load(Path(args.home).resolve())
    configure_logging(config.log_level)
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
