"""Incremental (delta) Aggregated Discovery Service over grpc.aio, fed by a :class:`ResourceCache`.

One :class:`xdsserver.stream.DeltaStream` per connected Envoy (what it holds, sends, rejects).
This module owns the gRPC service and the ACK quorum: :meth:`XdsServer.acked` answers "has every
connected Envoy applied these versions?", which is what turns a model Available.

An Envoy that stops answering (a response unACKed for ``ack_deadline_s``) is dropped from the
quorum and reported, so one stuck Envoy cannot hold every model back; it rejoins once it answers.
A resource Envoy rejects on its own is reported to ``on_reject`` listeners with Envoy's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xdsserver.cache import Requirement, ResourceCache
from xdsserver.routes import AckedNames, AckListener
from xdsserver.stream import DeltaStream, RejectListener

log = structlog.get_logger("meshserve.xds")
Context = grpc.aio.ServicerContext[Any, Any]

# How long an Envoy may leave a response unanswered before it leaves the ACK quorum.
ACK_DEADLINE_S = 10.0


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The ADS gRPC service. Knows streams and ACKs; never how resources are computed."""

    def __init__(
        self, cache: ResourceCache, *, min_envoys: int = 1, ack_deadline_s: float = ACK_DEADLINE_S
    ) -> None:
        self._cache = cache
        self._min_envoys = min_envoys
        self._ack_deadline = ack_deadline_s
        self._prefix = secrets.token_hex(3)  # lets an Envoy tell this scheduler run from the last
        self._streams: set[DeltaStream] = set()
        self._ack_listeners: list[AckListener] = []
        self._reject_listeners: list[RejectListener] = []

    def on_reject(self, listener: RejectListener) -> Callable[[], None]:
        """``listener(type_url, name, message)`` when an Envoy rejects one resource on its own."""
        self._reject_listeners.append(listener)
        return lambda: self._reject_listeners.remove(listener)

    @property
    def stuck(self) -> list[str]:
        """Envoys dropped from the ACK quorum because they stopped answering."""
        return sorted(s.node_id for s in self._streams if s.node_id and s.stuck)

    def on_ack(self, listener: AckListener) -> Callable[[], None]:
        """``listener`` hears the names each ACK covered, and ``None`` when the set of Envoys changed."""
        self._ack_listeners.append(listener)
        return lambda: self._ack_listeners.remove(listener)

    @property
    def connected(self) -> list[str]:
        return sorted(s.node_id for s in self._streams if s.node_id)

    def acked(self, requirements: Iterable[Requirement]) -> bool:
        """True when at least ``min_envoys`` Envoys are connected and all of them hold every version."""
        wanted = list(requirements)
        if not wanted:
            return True
        return len(self._quorum_streams()) >= self._min_envoys and self.held(wanted)

    def held(self, requirements: Iterable[Requirement]) -> bool:
        """True when every connected Envoy holds every version (vacuously, with none connected)."""
        wanted = list(requirements)
        return all(s.holds(r) for s in self._quorum_streams() for r in wanted)

    def _quorum_streams(self) -> list[DeltaStream]:
        return [s for s in self._streams if s.node_id and not s.stuck]

    def _notify_reject(self, type_url: str, name: str, message: str) -> None:
        for listener in list(self._reject_listeners):
            listener(type_url, name, message)

    async def _watch(self, stream: DeltaStream) -> None:
        """Drop a silent Envoy from the quorum (and take it back once it answers again)."""
        while True:
            await asyncio.sleep(self._ack_deadline / 4)
            stuck = stream.oldest_unacked(time.monotonic()) > self._ack_deadline
            if stuck == stream.stuck:
                continue
            stream.stuck = stuck
            if stuck:
                log.warning("envoy stopped acknowledging: left the ACK quorum", node=stream.node_id)
            else:
                log.info("envoy acknowledges again: back in the ACK quorum", node=stream.node_id)
            self._notify_ack(None)

    def _notify_ack(self, names: AckedNames) -> None:
        for listener in list(self._ack_listeners):
            listener(names)

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: Context,
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "meshserve serves incremental xDS only: set api_type DELTA_GRPC in the Envoy bootstrap",
        )

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: Context,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        stream = DeltaStream(self._cache, self._prefix, self._notify_ack, self._notify_reject)
        unwatch = self._cache.watch(stream.mark_dirty)
        self._streams.add(stream)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    stream.handle_request(request)
            finally:
                stream.close()  # Envoy closed its side or the call failed: the writer ends too

        reader = asyncio.create_task(read(), name="xds-delta-reader")
        watchdog = asyncio.create_task(self._watch(stream), name="xds-ack-watchdog")
        try:
            # Straight from the stream's writer: no task per response (each change sends two).
            async for response in stream.responses():
                yield response
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.info("xds stream ended", error=str(reader.exception()))
        finally:
            unwatch()
            self._streams.discard(stream)
            reader.cancel()
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            log.info("envoy disconnected", node=stream.node_id)
            self._notify_ack(None)
