"""Composition root: builds the agent's collaborators and runs it until cancelled."""

from __future__ import annotations

import grpc
from structlog.typing import FilteringBoundLogger

from agent.client import AgentClient
from agent.config import AgentConfig
from agent.log import get_logger
from agent.mlserver import MLServerClient
from agent.operations import ModelOperator
from agent.repository import LocalRepository
from agent.state import ReplicaState
from apis.limits import GRPC_RECEIVE_LIMIT


async def run_agent(config: AgentConfig, *, logger: FilteringBoundLogger | None = None) -> None:
    """Wait for MLServer, adopt what it still serves, then follow the scheduler until cancelled.

    Cancelling leaves MLServer's models loaded, so a restarted agent can adopt them.
    """
    log = logger or get_logger()
    state = ReplicaState(memory_bytes=config.memory_bytes, overcommit_percentage=config.overcommit_percentage)
    repository = LocalRepository(config.models_dir)
    async with MLServerClient(config.mlserver_url) as mlserver:
        log.info("waiting for MLServer", url=config.mlserver_url)
        await mlserver.wait_live(config.startup_timeout_seconds)
        operator = ModelOperator(mlserver=mlserver, repository=repository, state=state, logger=log)
        await operator.adopt_or_clean()
        async with grpc.aio.insecure_channel(
            config.scheduler_address, options=[GRPC_RECEIVE_LIMIT]
        ) as channel:
            client = AgentClient(config=config, channel=channel, operator=operator, state=state, logger=log)
            await client.run()
