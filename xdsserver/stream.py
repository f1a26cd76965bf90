"""One Envoy's delta ADS stream: what it subscribed to, what was sent, ACKed and rejected.

Owned by :meth:`xdsserver.server.XdsServer.DeltaAggregatedResources`; everything runs on the
event loop. The stream only records which names changed (cache watcher) and sends them from its
own writer, so a burst of changes coalesces into one response per type, in make-before-break
order: new clusters, listeners, scopes and routes first; removed clusters last.

Flow control: while a response of a type waits for Envoy's answer (ACK or NACK), that type's next
changes wait with it, and so do scopes and listeners while clusters wait (they may name them), and
cluster removals while anything waits. A change after a quiet spell goes out at once; a burst
(10,000 loads) goes out as one response per Envoy round trip instead of one per change, which
costs the scheduler and Envoy less (decision 0030).

NACKs: Envoy keeps its previous state for a rejected response. When the response carried several
resources, each is resent alone, so the bad one is found and the rest go on; a resource rejected
alone is reported (``on_reject``) and not resent until its version changes.

Silence: :meth:`DeltaStream.oldest_unacked` tells how long the oldest response has waited for an
ACK, so the server can drop an Envoy that stopped answering from its ACK quorum.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import structlog
from envoy.service.discovery.v3 import discovery_pb2

from xdsserver.cache import Changes, Requirement, ResourceCache
from xdsserver.routes import AckListener
from xdsserver.types import CLUSTER, LISTENER, ROUTE, SCOPED_ROUTE

log = structlog.get_logger("meshserve.xds.stream")

# Types Envoy subscribes to with a wildcard (everything we have).
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE})
# Resources per response: keeps single messages small when a fresh Envoy needs 10,000 models.
MAX_RESOURCES_PER_RESPONSE = 2000

# (type URL, resource name, Envoy's error message)
RejectListener = Callable[[str, str, str], None]


@dataclass
class _Subscription:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names


class DeltaStream:
    """State of one Envoy's delta ADS stream. Owned by :meth:`XdsServer.DeltaAggregatedResources`."""

    def __init__(
        self,
        cache: ResourceCache,
        version_prefix: str,
        on_ack: AckListener,
        on_reject: RejectListener | None = None,
    ) -> None:
        self.node_id = ""
        self._cache = cache
        self._prefix = version_prefix
        self._on_ack = on_ack
        self._on_reject = on_reject or (lambda _type, _name, _message: None)
        self._subs: dict[str, _Subscription] = {}
        self._sent: dict[str, dict[str, int]] = {}
        self._acked: dict[str, dict[str, int]] = {}
        # nonce -> (type URL, versions carried, when it was sent)
        self._pending: dict[str, tuple[str, dict[str, int], float]] = {}
        # Names of a NACKed batch, sent one per response until each is ACKed or rejected alone.
        self._isolate: dict[str, set[str]] = {}
        self._rejected: dict[str, dict[str, int]] = {}  # type URL -> name -> version rejected
        self.stuck = False  # set by the server's watchdog: dropped from the ACK quorum
        self._dirty: dict[str, set[str]] = {}
        # Types whose first request is unanswered: Envoy waits for a reply even when there is nothing.
        self._unanswered: set[str] = set()
        self._nonce = 0
        self._wakeup = asyncio.Event()
        self._closed = False
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
        type_url, versions, _ = pending
        if self._dirty or self._unanswered:
            self._wakeup.set()  # changes that waited for this answer go out now
        isolated = self._isolate.get(type_url, set())
        if request.HasField("error_detail"):
            self._nacked(type_url, versions, request.error_detail.message)
            return
        isolated.difference_update(versions)
        self._acked.setdefault(type_url, {}).update(versions)
        self._on_ack([(type_url, name) for name in versions])

    def _nacked(self, type_url: str, versions: dict[str, int], message: str) -> None:
        """Envoy kept its previous state for these names: nothing in the response counts as held.

        Several names: each goes out again alone, to find the bad one. One name: it is the bad
        one; it is reported and not resent until its version changes.
        """
        self.nacks += 1
        sent = self._sent.setdefault(type_url, {})
        for name in versions:
            sent[name] = -1
        log.warning(
            "envoy rejected config",
            node=self.node_id,
            type_url=type_url,
            resources=sorted(versions)[:5],
            count=len(versions),
            error=message,
        )
        if len(versions) > 1:
            self._isolate.setdefault(type_url, set()).update(versions)
            self._dirty.setdefault(type_url, set()).update(versions)
            self._wakeup.set()
            return
        [(name, version)] = versions.items()
        self._isolate.get(type_url, set()).discard(name)
        self._rejected.setdefault(type_url, {})[name] = version
        self._on_reject(type_url, name, message)

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

    def close(self) -> None:
        """Envoy's side ended: :meth:`responses` stops (after the response it is sending)."""
        self._closed = True
        self._wakeup.set()

    async def responses(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        """Responses as changes arrive, until :meth:`close`."""
        while not self.closed():
            await self._wakeup.wait()
            self._wakeup.clear()
            for response in self._drain():
                if self.closed():
                    return
                yield response

    def closed(self) -> bool:
        return self._closed

    def _drain(self) -> Iterable[discovery_pb2.DeltaDiscoveryResponse]:
        """Responses for what changed; a type Envoy has not answered yet waits (:meth:`_awaiting_ack`)."""
        dirty, self._dirty = self._dirty, {}
        unanswered, self._unanswered = self._unanswered, set()
        waiting = self._awaiting_ack()
        removed_clusters: list[str] = []
        for type_url in (CLUSTER, LISTENER, SCOPED_ROUTE, ROUTE):
            names = dirty.get(type_url, set())
            if not names and type_url not in unanswered:
                continue
            if type_url in waiting or (type_url != CLUSTER and CLUSTER in self._dirty):
                # What names a cluster waits with the clusters: make-before-break across drains.
                self._defer(type_url, names, unanswered)
                continue
            upserts, removals = self._diff(type_url, names)
            if not upserts and not removals and type_url in unanswered:
                yield self._empty(type_url)
                continue
            if type_url == CLUSTER:
                removed_clusters, removals = removals, []
            yield from self._build_isolating(type_url, upserts, removals)
        if removed_clusters and (self._dirty or CLUSTER in self._awaiting_ack()):
            # Removed last, once every scope that stopped naming them has gone out.
            self._defer(CLUSTER, set(removed_clusters), set())
        elif removed_clusters:
            yield from self._build_isolating(CLUSTER, [], removed_clusters)

    def _awaiting_ack(self) -> set[str]:
        """Types with a response Envoy has not answered yet: their next changes wait for it, so a
        burst of changes becomes one response per round trip instead of one per change (as
        go-control-plane's watches do), and what waits for Envoy is bounded by its names."""
        return {type_url for type_url, _, _ in self._pending.values()}

    def _defer(self, type_url: str, names: set[str], unanswered: set[str]) -> None:
        if names:
            self._dirty.setdefault(type_url, set()).update(names)
        if type_url in unanswered:
            self._unanswered.add(type_url)

    def _build_isolating(
        self, type_url: str, upserts: list[str], removals: list[str]
    ) -> Iterable[discovery_pb2.DeltaDiscoveryResponse]:
        """Batches as usual, except names under suspicion after a NACK: one response each."""
        isolated = self._isolate.get(type_url, set())
        yield from self._build(
            type_url, [n for n in upserts if n not in isolated], [n for n in removals if n not in isolated]
        )
        for name in (n for n in upserts if n in isolated):
            yield from self._build(type_url, [name], [])
        for name in (n for n in removals if n in isolated):
            yield from self._build(type_url, [], [name])

    def _diff(self, type_url: str, names: set[str]) -> tuple[list[str], list[str]]:
        sub = self._subs[type_url]
        sent = self._sent.setdefault(type_url, {})
        upserts: list[str] = []
        removals: list[str] = []
        rejected = self._rejected.get(type_url, {})
        for name in sorted(names):
            entry = self._cache.get(type_url, name)
            live = entry is not None and entry.resource is not None and sub.covers(name)
            if live and entry is not None and rejected.get(name) == entry.version:
                continue  # Envoy refused exactly this version: wait for a new one
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
            self._pending[nonce] = (type_url, carried, time.monotonic())
            yield response

    def _empty(self, type_url: str) -> discovery_pb2.DeltaDiscoveryResponse:
        self._nonce += 1
        nonce = str(self._nonce)
        self._pending[nonce] = (type_url, {}, time.monotonic())
        return discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce)

    def _render(self, version: int) -> str:
        return f"{self._prefix}-{version}"

    # -- ACK queries -----------------------------------------------------------------------------

    def oldest_unacked(self, now: float) -> float:
        """Seconds the oldest unanswered response has waited (0: Envoy answered everything)."""
        return max((now - sent_at for _, _, sent_at in self._pending.values()), default=0.0)

    def holds(self, requirement: Requirement) -> bool:
        if requirement.removed:
            # Applied once the removal went out and was acknowledged (or the name was never sent).
            return requirement.name not in self._sent.get(requirement.type_url, {}) and not any(
                t == requirement.type_url and requirement.name in carried
                for t, carried, _ in self._pending.values()
            )
        acked = self._acked.get(requirement.type_url, {}).get(requirement.name)
        return acked is not None and acked >= requirement.version
