"""The agent's identity towards the scheduler: a random token made at start, sent with every call.

The scheduler lets only the agent that holds a replica's live Subscribe stream keep it: a second
registration for the same server replica with another token is refused (``ALREADY_EXISTS``) while
that stream lives. The token is gRPC metadata (:data:`apis.names.AGENT_ID_HEADER`) because Seldon's
``AgentSubscribeRequest`` has no field for it; a client interceptor adds it to every call.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import grpc

from apis.names import AGENT_ID_HEADER


def new_agent_id() -> str:
    return secrets.token_urlsafe(16)


class AgentIdentity(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds ``x-meshserve-agent-id: <token>`` to every unary and server-streaming call."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id

    def _with_identity(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(AGENT_ID_HEADER, self.agent_id)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_identity(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_identity(client_call_details), request)
