"""Agent events on one acknowledged stream (``AgentEventsAcked``), one batch in flight.

Each batch carries the next sequence number; it is delivered when the scheduler answers with that
number, after applying it. Anything else (the call failing, the stream ending, no answer in time)
means not delivered: the stream is dropped, the caller retries the batch, and the next delivery
opens a new stream. That is the guarantee of one acknowledged ``AgentEvent`` call per event, for
two stream messages per batch: gRPC's per-call cost is most of what an event costs the scheduler.
A batch the scheduler applied but whose answer was lost is sent again; the scheduler ignores
events that no longer fit a replica's state (as for a retried ``AgentEvent``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from apis.mlops.agent import agent_pb2, agent_pb2_grpc


class NotAcknowledged(ConnectionError):
    """The event stream ended before the scheduler acknowledged the batch."""


class AckedEventStream:
    """Delivers event batches on one ``AgentEventsAcked`` stream; callers send one at a time."""

    def __init__(self, stub: agent_pb2_grpc.AgentServiceStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s
        self._call: grpc.aio.StreamStreamCall[Any, Any] | None = None
        self._sequence = 0

    async def deliver(self, events: list[agent_pb2.ModelEventMessage]) -> None:
        """Return once the scheduler acknowledged ``events``.

        Raises ``grpc.aio.AioRpcError`` (UNIMPLEMENTED: a scheduler without this RPC),
        ``TimeoutError`` or :class:`NotAcknowledged`; the stream is then closed.
        """
        if self._call is None or self._call.done():
            # A stream that ended while idle (the scheduler restarted) cannot be written: a new one.
            self.close()
            self._call = self._open()
        call = self._call
        self._sequence += 1
        sequence = self._sequence
        try:
            async with asyncio.timeout(self._timeout_s):
                await call.write(agent_pb2.ModelEventBatch(events=events, sequence=sequence))
                ack = await call.read()
        except asyncio.InvalidStateError as error:  # the call ended just before the write
            self.close()
            raise NotAcknowledged(f"the event stream ended before batch {sequence} was sent") from error
        except BaseException:
            self.close()
            raise
        if not isinstance(ack, agent_pb2.ModelEventBatchAck) or ack.sequence != sequence:
            self.close()
            raise NotAcknowledged(f"the event stream ended before batch {sequence} was acknowledged")

    def _open(self) -> grpc.aio.StreamStreamCall[Any, Any]:
        # Called without an iterator, grpc.aio returns a call written to with ``write``; the
        # generated stubs only know the iterator form.
        call: grpc.aio.StreamStreamCall[Any, Any] = self._stub.AgentEventsAcked()  # type: ignore[call-arg,assignment]
        return call

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
