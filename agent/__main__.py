"""``python -m agent``: run one agent until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from agent.app import run_agent
from agent.config import AgentConfig, parse_config
from agent.errors import AgentError
from agent.log import get_logger
from apis.logs import configure_logging


async def _main(config: AgentConfig) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        if config.simulate:
            from agent.simulate import run_simulated_agent

            await run_simulated_agent(config)
        else:
            await run_agent(config)
    except asyncio.CancelledError:
        get_logger().info("agent stopped")
        return 0
    except AgentError as exc:
        get_logger().error("agent failed", error=str(exc))
        return 1
    return 0


def main() -> None:
    config = parse_config()
    configure_logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(_main(config)))


if __name__ == "__main__":
    main()
