"""The agent's debug service (Seldon's ``AgentDebugService.ReplicaStatus``): which assigned models
are in memory and which are evicted, with when each was last used, and the free memory reported to
the scheduler. Its own loopback port (``--debug-port``), never the data-plane listener."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from structlog.typing import FilteringBoundLogger

from agent.state import ReplicaState, versioned_name
from apis.mlops.agent_debug import agent_debug_pb2 as debug_pb2
from apis.mlops.agent_debug import agent_debug_pb2_grpc as debug_grpc

State = debug_pb2.ModelReplicaState


def replica_status(state: ReplicaState) -> debug_pb2.ReplicaStatusResponse:
    models = []
    for model_version in sorted(state.loaded_models(), key=versioned_name):
        served = versioned_name(model_version)
        entry = State(name=served, state=State.InMemory if state.is_resident(served) else State.Evicted)
        last_used = state.last_used(served)
        if last_used is not None:
            entry.lastAccessed.CopyFrom(
                timestamp_pb2.Timestamp(seconds=int(last_used), nanos=_nanos(last_used))
            )
        models.append(entry)
    return debug_pb2.ReplicaStatusResponse(availableMemoryBytes=state.available_bytes(), models=models)


def _nanos(seconds: float) -> int:
    return int((seconds - int(seconds)) * 1e9)


class DebugService(debug_grpc.AgentDebugServiceServicer):
    def __init__(self, state: ReplicaState, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self._state = state
        self._refresh = refresh

    async def ReplicaStatus(
        self, request: debug_pb2.ReplicaStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> debug_pb2.ReplicaStatusResponse:
        if self._refresh is not None:
            await self._refresh()  # last-used times as of now
        return replica_status(self._state)


@contextlib.asynccontextmanager
async def served_debug(
    state: ReplicaState,
    *,
    host: str,
    port: int,
    logger: FilteringBoundLogger,
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[None]:
    """ReplicaStatus on ``host:port`` while the block runs; port 0 serves nothing. A port that is
    taken is logged and the agent runs on without it: a debug aid must not take the replica down."""
    server = grpc.aio.server()
    debug_grpc.add_AgentDebugServiceServicer_to_server(DebugService(state, refresh), server)
    try:
        if port and _bind(server, host, port, logger):
            await server.start()
            logger.info("serving the debug service", address=f"{host}:{port}")
        yield
    finally:
        await server.stop(grace=1.0)


def _bind(server: grpc.aio.Server, host: str, port: int, logger: FilteringBoundLogger) -> bool:
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        logger.error("cannot serve the debug service; running without it", port=port)
    return bool(bound)
