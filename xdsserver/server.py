"""Incremental (delta) Aggregated Discovery Service over grpc.aio, fed by a :class:`ResourceCache`.

One :class:`DeltaStream` per connected Envoy. The stream only records which names changed (cache
watcher) and sends them from its own writer task, so a burst of changes coalesces into one
response per type. Responses go out in make-before-break order: new clusters, listeners, scopes and
routes first; removed clusters last, once nothing routes to them.

ACK tracking: every response's nonce maps to the versions it carried; an ACK marks them as held by
that Envoy. :meth:`XdsServer.acked` answers "has every connected Envoy applied these versions?",
which is what turns a model Available.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xdsserver.cache import Changes, Requirement, ResourceCache
from xdsserver.routes import AckedNames, AckListener
from xdsserver.types import CLUSTER, LISTENER, ROUTE, SCOPED_ROUTE

log = structlog.get_logger("meshserve.xds")
Context = grpc.aio.ServicerContext[Any, Any]

# Types Envoy subscribes to with a wildcard (everything we have).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE})
# Resources per response: keeps single messages small when a fresh Envoy needs 10,000 models.
MAX_RESOURCES_PER_RESPONSE = 2000


@dataclass
class _Subscription:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream:
    """State of one Envoy's delta ADS stream. Owned by :meth:`XdsServer.DeltaAggregatedResources`."""

    def __init__(self, cache: ResourceCache, version_prefix: str, on_ack: AckListener) -> None:
        self.node_id = ""
        self._cache = cache
        self._prefix = version_prefix
        self._on_ack = on_ack
        self._subs: dict[str, _Subscription] = {}
        self._sent: dict[str, dict[str, int]] = {}
        self._acked: dict[str, dict[str, int]] = {}
        self._pending: dict[str, tuple[str, dict[str, int]]] = {}
        self._dirty: dict[str, set[str]] = {}
        # Types whose first request is unanswered: Envoy waits for a reply even when there is nothing.
        self._unanswered: set[str] = set()
        self._nonce = 0
        self._wakeup = asyncio.Event()
        self.nacks = 0

    # -- inbound ---------------------------------------------------------------------------------

    def mark_dirty(self, changes: Changes) -> None:
        for type_url, names in changes.items():
            if type_url in self._subs:
                self._dirty.setdefault(type_url, set()).update(names)
        self._wakeup.set()

    def handle_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if not self.node_id and request.node.id:
            self.node_id = request.node.id
        type_url = request.type_url
        if request.response_nonce:
            self._handle_ack(request)
        sub = self._subs.get(type_url)
        if sub is None:
            sub = self._subs[type_url] = _Subscription()
            self._unanswered.add(type_url)
            names = set(request.resource_names_subscribe)
            sub.wildcard = type_url in WILDCARD_TYPES and (not names or "*" in names)
            self._adopt_initial_versions(type_url, dict(request.initial_resource_versions))
            if sub.wildcard:
                self._dirty.setdefault(type_url, set()).update(self._cache.live(type_url))
        new_names = set(request.resource_names_subscribe) - {"*"}
        if new_names:
            sub.names |= new_names
            self._dirty.setdefault(type_url, set()).update(new_names)
        for name in request.resource_names_unsubscribe:
            sub.names.discard(name)
            self._sent.get(type_url, {}).pop(name, None)
            self._acked.get(type_url, {}).pop(name, None)
        self._wakeup.set()

    def _handle_ack(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        pending = self._pending.pop(request.response_nonce, None)
        if pending is None:
            return
        type_url, versions = pending
        if request.HasField("error_detail"):
            self.nacks += 1
            # Envoy kept its previous state for these names: nothing in this response counts as
            # held, and a removal must go out again with the next change to the name.
            sent = self._sent.setdefault(type_url, {})
            for name in versions:
                sent[name] = -1
            log.warning(
                "envoy rejected config",
                node=self.node_id,
                type_url=type_url,
                resources=sorted(versions)[:5],
                error=request.error_detail.message,
            )
            return
        self._acked.setdefault(type_url, {}).update(versions)
        self._on_ack([(type_url, name) for name in versions])

    def _adopt_initial_versions(self, type_url: str, held: dict[str, str]) -> None:
        """A reconnecting Envoy says what it holds: skip what is current, remove what is gone."""
        sent = self._sent.setdefault(type_url, {})
        for name, version in held.items():
            entry = self._cache.get(type_url, name)
            if entry is not None and entry.resource is not None and version == self._render(entry.version):
                sent[name] = entry.version
                self._acked.setdefault(type_url, {})[name] = entry.version
            else:
                sent[name] = -1  # make the writer send the current state (or a removal)
                self._dirty.setdefault(type_url, set()).add(name)

    # -- outbound --------------------------------------------------------------------------------

    async def responses(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            for response in self._drain():
                yield response

    def _drain(self) -> Iterable[discovery_pb2.DeltaDiscoveryResponse]:
        dirty, self._dirty = self._dirty, {}
        unanswered, self._unanswered = self._unanswered, set()
        removed_clusters: list[str] = []
        for type_url in (CLUSTER, LISTENER, SCOPED_ROUTE, ROUTE):
            names = dirty.get(type_url, set())
            if not names and type_url not in unanswered:
                continue
            upserts, removals = self._diff(type_url, names)
            if not upserts and not removals and type_url in unanswered:
                yield self._empty(type_url)
                continue
            if type_url == CLUSTER:
                removed_clusters, removals = removals, []
            yield from self._build(type_url, upserts, removals)
        if removed_clusters:
            yield from self._build(CLUSTER, [], removed_clusters)

    def _diff(self, type_url: str, names: set[str]) -> tuple[list[str], list[str]]:
        sub = self._subs[type_url]
        sent = self._sent.setdefault(type_url, {})
        upserts: list[str] = []
        removals: list[str] = []
        for name in sorted(names):
            entry = self._cache.get(type_url, name)
            live = entry is not None and entry.resource is not None and sub.covers(name)
            if live and entry is not None and sent.get(name) != entry.version:
                upserts.append(name)
            elif not live and name in sent:
                removals.append(name)
        return upserts, removals

    def _build(
        self, type_url: str, upserts: list[str], removals: list[str]
    ) -> Iterable[discovery_pb2.DeltaDiscoveryResponse]:
        sent = self._sent.setdefault(type_url, {})
        for start in range(0, max(len(upserts), len(removals), 1), MAX_RESOURCES_PER_RESPONSE):
            chunk_up = upserts[start : start + MAX_RESOURCES_PER_RESPONSE]
            chunk_rm = removals[start : start + MAX_RESOURCES_PER_RESPONSE]
            if not chunk_up and not chunk_rm:
                return
            self._nonce += 1
            nonce = str(self._nonce)
            response = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce)
            carried: dict[str, int] = {}
            for name in chunk_up:
                entry = self._cache.get(type_url, name)
                assert entry is not None and entry.resource is not None
                resource = response.resources.add(name=name, version=self._render(entry.version))
                resource.resource.CopyFrom(entry.resource)
                sent[name] = carried[name] = entry.version
            for name in chunk_rm:
                response.removed_resources.append(name)
                del sent[name]
                entry = self._cache.get(type_url, name)
                carried[name] = entry.version if entry is not None else 0
            response.system_version_info = self._render(max(carried.values(), default=0))
            self._pending[nonce] = (type_url, carried)
            yield response

    def _empty(self, type_url: str) -> discovery_pb2.DeltaDiscoveryResponse:
        self._nonce += 1
        nonce = str(self._nonce)
        self._pending[nonce] = (type_url, {})
        return discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce)

    def _render(self, version: int) -> str:
        return f"{self._prefix}-{version}"

    # -- ACK queries -----------------------------------------------------------------------------

    def holds(self, requirement: Requirement) -> bool:
        if requirement.removed:
            # Applied once the removal went out and was acknowledged (or the name was never sent).
            return requirement.name not in self._sent.get(requirement.type_url, {}) and not any(
                t == requirement.type_url and requirement.name in carried
                for t, carried in self._pending.values()
            )
        acked = self._acked.get(requirement.type_url, {}).get(requirement.name)
        return acked is not None and acked >= requirement.version


class XdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The ADS gRPC service. Knows streams and ACKs; never how resources are computed."""

    def __init__(self, cache: ResourceCache, *, min_envoys: int = 1) -> None:
        self._cache = cache
        self._min_envoys = min_envoys
        self._prefix = secrets.token_hex(3)  # lets an Envoy tell this scheduler run from the last
        self._streams: set[DeltaStream] = set()
        self._ack_listeners: list[AckListener] = []

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
        streams = [s for s in self._streams if s.node_id]
        if len(streams) < self._min_envoys:
            return False
        return all(s.holds(r) for s in streams for r in wanted)

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
        stream = DeltaStream(self._cache, self._prefix, self._notify_ack)
        unwatch = self._cache.watch(stream.mark_dirty)
        self._streams.add(stream)

        async def read() -> None:
            async for request in request_iterator:
                stream.handle_request(request)

        reader = asyncio.create_task(read(), name="xds-delta-reader")
        try:
            async for response in _until_done(stream.responses(), reader):
                yield response
        finally:
            unwatch()
            self._streams.discard(stream)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            log.info("envoy disconnected", node=stream.node_id)
            self._notify_ack(None)


async def _until_done(
    responses: AsyncIterator[discovery_pb2.DeltaDiscoveryResponse], reader: asyncio.Task[None]
) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
    """Yield responses until the reader task ends (Envoy closed its side or the call failed)."""
    iterator = aiter(responses)
    while True:
        next_response = asyncio.ensure_future(anext(iterator))
        done, _ = await asyncio.wait({next_response, reader}, return_when=asyncio.FIRST_COMPLETED)
        if next_response in done:
            yield next_response.result()
            continue
        next_response.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await next_response
        if not reader.cancelled() and reader.exception() is not None:
            log.info("xds stream ended", error=str(reader.exception()))
        return
