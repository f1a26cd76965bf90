"""``python -m agent``: run one agent until SIGTERM (drain first) or SIGINT (stop at once)."""

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
    """SIGTERM drains the replica (its models move elsewhere, make before break) and then exits, as a
    Kubernetes pod does on termination; a second SIGTERM, or SIGINT, stops at once and leaves
    MLServer's models loaded for a restarted agent to adopt (``meshserve down`` sends SIGINT)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    drain = asyncio.Event()

    def terminate() -> None:
        if drain.is_set() or config.simulate:
            task.cancel()
        else:
            get_logger().info("SIGTERM: draining before exit", deadline_s=config.drain_timeout_seconds)
            drain.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        if config.simulate:
            from agent.simulate import run_simulated_agent

            await run_simulated_agent(config)
        else:
            await run_agent(config, drain_requested=drain)
    except asyncio.CancelledError:
        get_logger().info("agent stopped")
        return 0
    except AgentError as exc:
        get_logger().error("agent failed", error=str(exc))
        return 1
    get_logger().info("agent stopped after draining")
    return 0


def main() -> None:
    config = parse_config()
    configure_logging(config.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(_main(config)))


if __name__ == "__main__":
    main()
