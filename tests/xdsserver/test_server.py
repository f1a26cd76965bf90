"""The delta ADS stream state (DeltaStream) and XdsServer's ACK oracle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from tests.scheduler.fakes import WAIT_S, wait_until
from xdsserver import server as xds
from xdsserver import stream as xds_stream
from xdsserver.cache import Requirement, ResourceCache
from xdsserver.routes import AckedNames, RoutePublisher
from xdsserver.server import XdsServer
from xdsserver.stream import DeltaStream
from xdsserver.types import CLUSTER, LISTENER, ROUTE, SCOPED_ROUTE

# Callable, not type[Message]: protobuf's stubs give the Message base no field keywords.
_MESSAGES: dict[str, Callable[..., Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    SCOPED_ROUTE: scoped_route_pb2.ScopedRouteConfiguration,
    ROUTE: route_pb2.RouteConfiguration,
}


def resource(type_url: str, name: str, tag: str = "") -> tuple[str, str, Message]:
    message = _MESSAGES[type_url](name=name + tag)
    return type_url, name, message


def request(
    type_url: str,
    *,
    subscribe: tuple[str, ...] = (),
    unsubscribe: tuple[str, ...] = (),
    nonce: str = "",
    error: str = "",
    initial: dict[str, str] | None = None,
) -> discovery_pb2.DeltaDiscoveryRequest:
    built = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    built.node.id = "envoy-1"
    if error:
        built.error_detail.message = error
    return built


class AckCounter:
    """An ACK listener that counts calls and remembers the names ACKs covered."""

    def __init__(self) -> None:
        self.count = 0
        self.names: set[tuple[str, str]] = set()
        self.calls: list[list[tuple[str, str]] | None] = []

    def __call__(self, names: AckedNames) -> None:
        self.count += 1
        self.calls.append(None if names is None else list(names))
        self.names.update(self.calls[-1] or ())


def new_stream(cache: ResourceCache) -> tuple[DeltaStream, AckCounter]:
    acks = AckCounter()
    stream = DeltaStream(cache, "p", acks)
    cache.watch(stream.mark_dirty)
    return stream, acks


def drain(stream: DeltaStream) -> list[discovery_pb2.DeltaDiscoveryResponse]:
    """What the stream's writer would send right now."""
    return list(stream._drain())


def summary(responses: list[discovery_pb2.DeltaDiscoveryResponse]) -> list[tuple[str, list[str], list[str]]]:
    return [
        (r.type_url.rsplit(".", 1)[-1], [x.name for x in r.resources], list(r.removed_resources))
        for r in responses
    ]


def ack(stream: DeltaStream, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
    stream.handle_request(request(response.type_url, nonce=response.nonce))


# -- DeltaStream -----------------------------------------------------------------------------------


def test_wildcard_subscription_gets_every_live_resource_with_prefixed_versions() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, "a"), resource(CLUSTER, "b")], removals=[])
    cache.apply(removals=[(CLUSTER, "b")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    [response] = drain(stream)
    assert [(r.name, r.version) for r in response.resources] == [("a", "p-1")]
    assert response.nonce and response.system_version_info == "p-1"
    assert stream.node_id == "envoy-1"


def test_first_request_with_nothing_to_send_gets_an_empty_response_once() -> None:
    stream, _ = new_stream(ResourceCache())
    stream.handle_request(request(LISTENER))
    [response] = drain(stream)
    assert response.type_url == LISTENER and not response.resources and response.nonce
    assert drain(stream) == []


def test_ack_marks_the_sent_versions_as_held() -> None:
    cache = ResourceCache()
    [requirement] = cache.apply(upserts=[resource(CLUSTER, "a")])
    stream, acks = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    [response] = drain(stream)
    assert not stream.holds(requirement)
    ack(stream, response)
    assert stream.holds(requirement)
    assert acks.count == 1


def test_nack_holds_nothing_and_is_counted() -> None:
    cache = ResourceCache()
    [requirement] = cache.apply(upserts=[resource(CLUSTER, "a")])
    stream, acks = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    [response] = drain(stream)
    stream.handle_request(request(CLUSTER, nonce=response.nonce, error="bad cluster"))
    assert not stream.holds(requirement)
    assert (stream.nacks, acks.count) == (1, 0)


def test_ack_of_an_older_version_does_not_hold_the_newer_one() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, "a")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    [first] = drain(stream)
    [newer] = cache.apply(upserts=[resource(CLUSTER, "a", tag="-v2")])
    ack(stream, first)
    assert not stream.holds(newer)
    [second] = drain(stream)
    ack(stream, second)
    assert stream.holds(newer)


def test_changes_between_sends_coalesce_into_one_response_per_type() -> None:
    cache = ResourceCache()
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    [first] = drain(stream)
    ack(stream, first)
    cache.apply(upserts=[resource(CLUSTER, "a")])
    cache.apply(upserts=[resource(CLUSTER, "b")])
    assert summary(drain(stream)) == [("Cluster", ["a", "b"], [])]


def test_changes_wait_for_envoys_answer_to_the_response_of_their_type() -> None:
    cache = ResourceCache()
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    stream.handle_request(request(SCOPED_ROUTE))
    first_clusters, first_scopes = drain(stream)
    cache.apply(upserts=[resource(CLUSTER, "a")])
    cache.apply(upserts=[resource(CLUSTER, "b")])
    assert drain(stream) == []  # one response of a type unanswered at a time
    ack(stream, first_scopes)
    assert drain(stream) == []  # the scopes' answer does not release clusters
    ack(stream, first_clusters)
    assert summary(drain(stream)) == [("Cluster", ["a", "b"], [])]  # a burst, one response


def test_a_nack_also_releases_the_changes_that_waited() -> None:
    cache = ResourceCache()
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    ack(stream, drain(stream)[0])
    cache.apply(upserts=[resource(CLUSTER, "a")])
    [sent] = drain(stream)
    cache.apply(upserts=[resource(CLUSTER, "b")])
    stream.handle_request(request(CLUSTER, nonce=sent.nonce, error="cluster a: invalid"))
    assert summary(drain(stream)) == [("Cluster", ["b"], [])]


def test_scopes_wait_while_clusters_wait_and_removals_go_after_them() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, "old"), resource(SCOPED_ROUTE, "iris")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    stream.handle_request(request(SCOPED_ROUTE))
    clusters, scopes = drain(stream)
    ack(stream, scopes)
    # A new cluster and the scope naming it, while Envoy has not answered the clusters yet.
    cache.apply(upserts=[resource(CLUSTER, "new"), resource(SCOPED_ROUTE, "iris", tag="-new")])
    cache.apply(removals=[(CLUSTER, "old")])
    assert drain(stream) == []  # the scope waits with its cluster
    ack(stream, clusters)
    first = drain(stream)
    assert summary(first) == [("Cluster", ["new"], []), ("ScopedRouteConfiguration", ["iris"], [])]
    for response in first:
        ack(stream, response)
    assert summary(drain(stream)) == [("Cluster", [], ["old"])]  # after the scope, never before


def test_updates_go_out_make_before_break() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, "old"), resource(SCOPED_ROUTE, "gone")])
    stream, _ = new_stream(cache)
    for type_url in (ROUTE, SCOPED_ROUTE, LISTENER, CLUSTER):
        stream.handle_request(request(type_url, subscribe=("r",) if type_url == ROUTE else ()))
    for response in drain(stream):
        ack(stream, response)
    cache.apply(
        upserts=[
            resource(ROUTE, "r"),
            resource(SCOPED_ROUTE, "iris"),
            resource(LISTENER, "seldon_http"),
            resource(CLUSTER, "new"),
        ],
        removals=[(CLUSTER, "old"), (SCOPED_ROUTE, "gone")],
    )
    updates = drain(stream)
    assert summary(updates) == [
        ("Cluster", ["new"], []),
        ("Listener", ["seldon_http"], []),
        ("ScopedRouteConfiguration", ["iris"], ["gone"]),
        ("RouteConfiguration", ["r"], []),
    ]
    for response in updates:
        ack(stream, response)
    assert summary(drain(stream)) == [("Cluster", [], ["old"])]  # once Envoy answered the rest


def test_named_subscription_only_gets_the_names_asked_for() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(ROUTE, "wanted"), resource(ROUTE, "other")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(ROUTE, subscribe=("wanted",)))
    assert summary(drain(stream)) == [("RouteConfiguration", ["wanted"], [])]
    cache.apply(upserts=[resource(ROUTE, "other", tag="-v2")])
    assert drain(stream) == []


def test_unsubscribed_names_are_no_longer_sent() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(ROUTE, "r")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(ROUTE, subscribe=("r",)))
    drain(stream)
    stream.handle_request(request(ROUTE, unsubscribe=("r",)))
    cache.apply(upserts=[resource(ROUTE, "r", tag="-v2")])
    assert drain(stream) == []


def test_reconnecting_envoy_keeps_current_versions_and_gets_the_rest() -> None:
    cache = ResourceCache()
    [current, *_] = cache.apply(upserts=[resource(CLUSTER, "current"), resource(CLUSTER, "stale")])
    cache.apply(upserts=[resource(CLUSTER, "stale", tag="-v2")])
    stream, _ = new_stream(cache)
    held = {"current": "p-1", "stale": "p-2", "gone": "p-9"}
    stream.handle_request(request(CLUSTER, initial=held))
    assert stream.holds(current)
    [stale] = drain(stream)
    assert summary([stale]) == [("Cluster", ["stale"], [])]
    ack(stream, stale)
    assert summary(drain(stream)) == [("Cluster", [], ["gone"])]


def test_versions_from_another_scheduler_run_are_resent() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, "a")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER, initial={"a": "other-1"}))
    assert summary(drain(stream)) == [("Cluster", ["a"], [])]


def test_removal_is_held_only_once_envoy_acks_it() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(SCOPED_ROUTE, "iris")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(SCOPED_ROUTE))
    ack(stream, drain(stream)[0])
    [removal] = cache.apply(removals=[(SCOPED_ROUTE, "iris")])
    assert not stream.holds(removal)  # not sent yet
    [response] = drain(stream)
    assert list(response.removed_resources) == ["iris"]
    assert not stream.holds(removal)  # sent, not acknowledged
    ack(stream, response)
    assert stream.holds(removal)


def test_removal_of_a_never_sent_resource_is_held() -> None:
    stream, _ = new_stream(ResourceCache())
    stream.handle_request(request(CLUSTER))
    assert stream.holds(Requirement(CLUSTER, "never", 3, removed=True))


def test_nacked_removal_is_not_held() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(SCOPED_ROUTE, "iris")])
    stream, _ = new_stream(cache)
    stream.handle_request(request(SCOPED_ROUTE))
    ack(stream, drain(stream)[0])
    [removal] = cache.apply(removals=[(SCOPED_ROUTE, "iris")])
    [response] = drain(stream)
    stream.handle_request(request(SCOPED_ROUTE, nonce=response.nonce, error="rejected"))
    assert not stream.holds(removal)


def test_large_updates_are_split_into_bounded_responses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xds_stream, "MAX_RESOURCES_PER_RESPONSE", 2)
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, name) for name in "abcde"])
    stream, _ = new_stream(cache)
    stream.handle_request(request(CLUSTER))
    assert [len(r.resources) for r in drain(stream)] == [2, 2, 1]


# -- XdsServer -------------------------------------------------------------------------------------


class EnvoyClient:
    """Plays Envoy on an in-process DeltaAggregatedResources call."""

    def __init__(self, server: XdsServer) -> None:
        self._requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        context = cast(xds.Context, object())  # unused by the delta handler
        self._responses = aiter(server.DeltaAggregatedResources(self._requests_iter(), context))

    async def _requests_iter(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (item := await self._requests.get()) is not None:
            yield item

    def send(self, message: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._requests.put_nowait(message)

    async def expect_response(self) -> discovery_pb2.DeltaDiscoveryResponse:
        return await asyncio.wait_for(anext(self._responses), WAIT_S)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(self._responses), WAIT_S)


def test_nothing_to_wait_for_is_acked_even_without_envoys() -> None:
    server = XdsServer(ResourceCache())
    assert server.acked([])
    assert not server.acked([Requirement(CLUSTER, "a", 1)])


def test_without_envoys_everything_counts_as_held_but_nothing_as_acked() -> None:
    server = XdsServer(ResourceCache())
    assert server.held([Requirement(CLUSTER, "a", 1)])
    assert not server.acked([Requirement(CLUSTER, "a", 1)])


async def test_a_restarted_scheduler_keeps_the_scopes_a_reconnecting_envoy_serves_from() -> None:
    # Restored before any Envoy connects: scopes go out with their clusters, not after their ACK,
    # or the reconnecting Envoy's first scopes would remove the ones it still answers with (404).
    cache = ResourceCache()
    server = XdsServer(cache)
    routes = RoutePublisher(cache, server)
    routes.publish(Route("iris", (Split("iris_1", WEIGHT_SCALE, (Endpoint("10.0.0.1", 9000, 9500),)),)))
    envoy = EnvoyClient(server)
    envoy.send(request(SCOPED_ROUTE, initial={"iris": "earlier-run-7"}))
    response = await envoy.expect_response()
    assert [r.name for r in response.resources] == ["iris"] and not response.removed_resources
    routes.close()
    await envoy.close()


async def test_connected_envoy_acks_through_the_grpc_stream() -> None:
    cache = ResourceCache()
    [requirement] = cache.apply(upserts=[resource(CLUSTER, "a")])
    server, acks = XdsServer(cache), AckCounter()
    server.on_ack(acks)
    envoy = EnvoyClient(server)
    envoy.send(request(CLUSTER))
    response = await envoy.expect_response()
    assert [r.name for r in response.resources] == ["a"]
    assert server.connected == ["envoy-1"] and not server.acked([requirement])
    envoy.send(request(CLUSTER, nonce=response.nonce))
    await wait_until(lambda: acks.count == 1)
    assert server.acked([requirement])
    await envoy.close()
    assert server.connected == [] and acks.count == 2


async def test_stream_sends_later_cache_changes() -> None:
    cache = ResourceCache()
    envoy = EnvoyClient(XdsServer(cache))
    envoy.send(request(CLUSTER))
    first = await envoy.expect_response()
    assert not first.resources
    cache.apply(upserts=[resource(CLUSTER, "late")])
    envoy.send(request(CLUSTER, nonce=first.nonce))
    assert [r.name for r in (await envoy.expect_response()).resources] == ["late"]
    await envoy.close()


async def test_acked_needs_every_connected_envoy() -> None:
    cache = ResourceCache()
    [requirement] = cache.apply(upserts=[resource(CLUSTER, "a")])
    server, acks = XdsServer(cache, min_envoys=1), AckCounter()
    server.on_ack(acks)
    first, second = EnvoyClient(server), EnvoyClient(server)
    first.send(request(CLUSTER))
    second.send(request(CLUSTER))
    response = await first.expect_response()
    await second.expect_response()
    first.send(request(CLUSTER, nonce=response.nonce))
    await wait_until(lambda: acks.count == 1)
    assert not server.acked([requirement])
    await second.close()
    assert server.acked([requirement])
    await first.close()


# -- NACKs and silent Envoys --------------------------------------------------------------------------


def test_a_nacked_batch_is_resent_one_resource_at_a_time_and_the_bad_one_reported() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[resource(CLUSTER, name) for name in ("a", "bad", "c")])
    rejected: list[tuple[str, str, str]] = []
    acks = AckCounter()
    stream = DeltaStream(cache, "p", acks, lambda *args: rejected.append(args))
    cache.watch(stream.mark_dirty)
    stream.handle_request(request(CLUSTER))
    [batch] = drain(stream)
    stream.handle_request(request(CLUSTER, nonce=batch.nonce, error="cluster bad: invalid"))
    singles = drain(stream)
    assert summary(singles) == [("Cluster", ["a"], []), ("Cluster", ["bad"], []), ("Cluster", ["c"], [])]
    for response in singles:
        bad = response.resources[0].name == "bad"
        stream.handle_request(
            request(CLUSTER, nonce=response.nonce, error="cluster bad: invalid" if bad else "")
        )
    assert rejected == [(CLUSTER, "bad", "cluster bad: invalid")]
    versions = {n: cache.get(CLUSTER, n).version for n in ("a", "bad", "c")}  # type: ignore[union-attr]
    assert stream.holds(Requirement(CLUSTER, "a", versions["a"]))
    assert stream.holds(Requirement(CLUSTER, "c", versions["c"]))
    assert not stream.holds(Requirement(CLUSTER, "bad", versions["bad"]))
    assert drain(stream) == []  # the refused version is not sent again...
    cache.apply(upserts=[resource(CLUSTER, "bad", "-fixed")])
    assert summary(drain(stream)) == [("Cluster", ["bad"], [])]  # ...a new one is


async def test_an_envoy_that_never_acks_leaves_the_quorum_and_comes_back_when_it_answers() -> None:
    cache = ResourceCache()
    [requirement] = cache.apply(upserts=[resource(CLUSTER, "a")])
    server, acks = XdsServer(cache, ack_deadline_s=0.2), AckCounter()
    server.on_ack(acks)
    healthy, silent = EnvoyClient(server), EnvoyClient(server)
    healthy.send(request(CLUSTER))
    silent.send(request(CLUSTER))
    response = await healthy.expect_response()
    late = await silent.expect_response()
    healthy.send(request(CLUSTER, nonce=response.nonce))
    await wait_until(lambda: acks.count >= 1)
    assert not server.acked([requirement])  # the silent one still counts
    await wait_until(lambda: server.acked([requirement]), timeout=2)  # ...until its deadline
    assert server.stuck == ["envoy-1"] and None in acks.calls
    silent.send(request(CLUSTER, nonce=late.nonce))  # it answers: back in the quorum
    await wait_until(lambda: server.stuck == [], timeout=2)
    await healthy.close()
    await silent.close()
