"""Simulated replica (``python -m agent --simulate``): for control-plane benchmarks and tests.

Registers with the scheduler like a real agent (same Subscribe stream, same ReplicaConfig and
memory accounting) but runs no model server: every LOAD_MODEL is answered LOADED and every
UNLOAD_MODEL UNLOADED at once. Its ``--inference-*`` flags name whatever upstream Envoy should
route to (e.g. a tiny HTTP server in ``bench/``), so routes can be exercised end to end.
"""

from __future__ import annotations

import grpc
from structlog.typing import FilteringBoundLogger

from agent.client import AgentClient
from agent.config import AgentConfig
from agent.identity import AgentIdentity, new_agent_id
from agent.log import get_logger
from agent.operations import Event, ModelOperator, Outcome
from agent.state import ReplicaState, versioned_name
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.mlops.agent import agent_pb2
from apis.runtime import NO_BDP_PROBE


class SimulatedOperator(ModelOperator):
    """Acknowledges loads and unloads without a model server."""

    def __init__(self, *, state: ReplicaState, logger: FilteringBoundLogger) -> None:
        # No MLServer and no repository: deliberately not calling ModelOperator.__init__.
        self._state = state
        self._log = logger

    async def load(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        self._state.add(model_version)
        return Outcome(model_version.model.meta.name, model_version.version, Event.LOADED)

    async def unload(self, model_version: agent_pb2.ModelVersion) -> Outcome:
        self._state.remove(versioned_name(model_version))
        return Outcome(model_version.model.meta.name, model_version.version, Event.UNLOADED)

    async def adopt_or_clean(self) -> None:
        return None


async def run_simulated_agent(config: AgentConfig, *, logger: FilteringBoundLogger | None = None) -> None:
    """Follow the scheduler until cancelled, acknowledging every operation immediately."""
    log = logger or get_logger()
    state = ReplicaState(memory_bytes=config.memory_bytes, overcommit_percentage=config.overcommit_percentage)
    operator = SimulatedOperator(state=state, logger=log)
    log.info(
        "simulated replica",
        upstream=f"{config.inference_host}:{config.inference_http_port}/{config.inference_grpc_port}",
    )
    identity = AgentIdentity(new_agent_id())
    async with grpc.aio.insecure_channel(
        config.scheduler_address, options=[GRPC_RECEIVE_LIMIT, NO_BDP_PROBE], interceptors=[identity]
    ) as channel:
        client = AgentClient(config=config, channel=channel, operator=operator, state=state, logger=log)
        await client.run()
