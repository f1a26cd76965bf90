"""The RoutePublisher: resources in the cache, reference-counted clusters, futures completed by ACKs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apis.routing import WEIGHT_SCALE, Endpoint, InvalidWeights, Route, Split, millionths
from tests.scheduler.fakes import FakeEnvoy
from xdsserver import clusters
from xdsserver.cache import ResourceCache
from xdsserver.routes import RoutePublisher
from xdsserver.types import CLUSTER, SCOPED_ROUTE

IP = Endpoint("10.0.0.1", 9000, 9500)
IP2 = Endpoint("10.0.0.2", 9000, 9500)


def split(target: str, percent: int = 100, *, own: bool = True, on: tuple[Endpoint, ...] = (IP,)) -> Split:
    return Split(target, percent * WEIGHT_SCALE // 100, on, own_clusters=own)


def publisher() -> tuple[ResourceCache, FakeEnvoy, RoutePublisher]:
    cache = ResourceCache()
    envoy = FakeEnvoy(cache)
    return cache, envoy, RoutePublisher(cache, envoy)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_the_scope_goes_out_once_envoy_holds_its_new_clusters() -> None:
    cache, envoy, routes = publisher()
    held = routes.publish(Route("iris", (split("iris_1"),)))
    assert set(cache.live(CLUSTER)) == {"iris_1_http", "iris_1_grpc"}
    assert cache.live(SCOPED_ROUTE) == {}  # make-before-break: not before Envoy has the clusters
    envoy.sync()
    assert set(cache.live(SCOPED_ROUTE)) == {"iris"} and held.done()
    # Clusters Envoy holds already: the scope goes out at once.
    routes.publish(Route("iris2", (split("iris2_1", own=False),)))
    envoy.sync()
    routes.publish(Route("iris3", (split("iris3_1", own=False),)))
    assert "iris3" in cache.live(SCOPED_ROUTE)
    routes.close()


async def test_a_moving_target_keeps_its_old_clusters_until_the_new_ones_are_held() -> None:
    cache, envoy, routes = publisher()
    routes.publish(Route("iris", (split("iris_1", own=False, on=(IP,)),)))
    envoy.sync()
    old = set(cache.live(CLUSTER))
    scope = cache.live(SCOPED_ROUTE)["iris"].version
    moved = routes.publish(Route("iris", (split("iris_1", own=False, on=(IP, IP2)),)))
    assert old < set(cache.live(CLUSTER)) and cache.live(SCOPED_ROUTE)["iris"].version == scope
    envoy.sync()  # the new pair is held: the scope switches, the old pair goes
    assert cache.live(SCOPED_ROUTE)["iris"].version != scope and not old & set(cache.live(CLUSTER))
    envoy.sync()
    assert moved.done() and not moved.cancelled()
    routes.close()


async def test_the_future_completes_only_once_envoy_holds_the_route() -> None:
    _, envoy, routes = publisher()
    held = routes.publish(Route("iris", (split("iris_1"),)))
    await settle()
    assert not held.done()
    envoy.sync()
    assert held.done() and not held.cancelled()
    # Already held: a republication of the same route completes at once.
    assert routes.publish(Route("iris", (split("iris_1"),))).done()
    routes.close()


async def test_publishing_again_supersedes_the_earlier_future() -> None:
    _, envoy, routes = publisher()
    first = routes.publish(Route("iris", (split("iris_1"),)))
    second = routes.publish(Route("iris", (split("iris_2"),)))
    assert first.cancelled()
    envoy.sync()
    assert second.done() and not second.cancelled()
    routes.close()


async def test_a_cluster_named_by_two_routes_stays_until_both_drop_it() -> None:
    cache, envoy, routes = publisher()
    routes.publish(Route("iris", (split("iris_1"),)))
    routes.publish(Route("ab.experiment", (split("iris_1", 50), split("iris-b_1", 50))))
    envoy.sync()
    assert routes.users("iris_1_http") == {"iris", "ab.experiment"}

    routes.publish(Route("ab.experiment"))  # the experiment's route goes
    assert set(cache.live(SCOPED_ROUTE)) == {"iris"}
    assert set(cache.live(CLUSTER)) == {"iris_1_http", "iris_1_grpc"}  # iris still names it

    routes.publish(Route("iris"))  # and now the last route naming it
    assert cache.live(CLUSTER) == {} and cache.live(SCOPED_ROUTE) == {}
    routes.close()


async def test_dropping_a_version_removes_its_clusters() -> None:
    cache, envoy, routes = publisher()
    routes.publish(Route("iris", (split("iris_2", 50), split("iris_1", 50))))
    routes.publish(Route("iris", (split("iris_2"),)))
    envoy.sync()
    assert set(cache.live(CLUSTER)) == {"iris_2_http", "iris_2_grpc"}
    routes.close()


async def test_a_removal_completes_once_envoy_dropped_the_route() -> None:
    _, envoy, routes = publisher()
    routes.publish(Route("iris", (split("iris_1"),)))
    envoy.sync()
    removed = routes.publish(Route("iris"))
    assert not removed.done()
    envoy.sync()
    assert removed.done()
    routes.close()


async def test_routes_of_other_models_are_untouched() -> None:
    cache, envoy, routes = publisher()
    routes.publish(Route("a", (split("a_1"),)))
    routes.publish(Route("b", (split("b_1"),)))
    envoy.sync()
    version = cache.live(SCOPED_ROUTE)["a"].version
    routes.publish(Route("b"))
    assert set(cache.live(SCOPED_ROUTE)) == {"a"} and cache.live(SCOPED_ROUTE)["a"].version == version
    routes.close()


async def test_versions_on_the_same_replicas_share_one_pair_of_clusters_until_the_last_goes() -> None:
    cache, _, routes = publisher()
    routes.publish(Route("a", (split("a_1", own=False, on=(IP, IP2)),)))
    routes.publish(Route("b", (split("b_1", own=False, on=(IP2, IP)),)))  # same set, other order
    routes.publish(Route("c", (split("c_1", own=False, on=(IP2,)),)))
    shared = set(cache.live(CLUSTER))
    assert len(shared) == 4 and not any(name.startswith(("a_", "b_", "c_")) for name in shared)
    pair = {n for n in shared if routes.users(n) == {"a", "b"}}
    assert len(pair) == 2 and all(routes.locate(n) is None for n in shared)  # no one version's

    routes.publish(Route("a"))
    assert set(cache.live(CLUSTER)) == shared  # b still names the pair
    routes.publish(Route("b"))
    assert set(cache.live(CLUSTER)) == shared - pair
    routes.close()


async def test_a_version_moving_to_its_own_clusters_leaves_the_shared_pair_to_the_others() -> None:
    cache, _, routes = publisher()
    routes.publish(Route("a", (split("a_1", own=False),)))
    routes.publish(Route("b", (split("b_1", own=False),)))
    shared = set(cache.live(CLUSTER))
    routes.publish(Route("a", (split("a_1", own=True),)))
    assert set(cache.live(CLUSTER)) == shared | {"a_1_http", "a_1_grpc"}
    assert routes.locate("a_1_http") is not None and routes.locate("a_1_http").target == "a_1"  # type: ignore[union-attr]
    routes.publish(Route("b"))
    assert set(cache.live(CLUSTER)) == {"a_1_http", "a_1_grpc"}
    routes.close()


async def test_a_replica_sets_clusters_in_the_cache_are_reused_not_rebuilt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, envoy, routes = publisher()
    built: list[str] = []
    build = clusters.clusters_for

    def counting(stem: str, *args: Any, **kwargs: Any) -> Any:
        built.append(stem)
        return build(stem, *args, **kwargs)

    monkeypatch.setattr(clusters, "clusters_for", counting)  # what split_clusters builds with
    routes.publish(Route("a", (split("a_1", own=False),)))
    envoy.sync()
    versions = {name: entry.version for name, entry in cache.live(CLUSTER).items()}
    held = routes.publish(Route("b", (split("b_1", own=False),)))
    envoy.sync()
    assert len(built) == 1  # built for the first model only
    assert {name: entry.version for name, entry in cache.live(CLUSTER).items()} == versions
    assert held.done() and not held.cancelled()
    assert routes.users(next(iter(versions))) == {"a", "b"}  # still counted for both
    routes.publish(Route("c", (split("c_1", own=False, on=(IP, IP2)),)))
    assert len(built) == 2  # another replica set: built
    routes.close()


def test_millionths_add_up_exactly() -> None:
    assert millionths([1, 1, 1]) == [333_334, 333_333, 333_333]
    assert millionths([30, 70]) == [300_000, 700_000]
    assert millionths([0, 5]) == [0, WEIGHT_SCALE]
    assert sum(millionths([7, 11, 13, 17])) == WEIGHT_SCALE


@pytest.mark.parametrize("shares", [[], [0, 0], [-1, 2]])
def test_weights_that_cannot_split_traffic_are_refused(shares: list[int]) -> None:
    with pytest.raises(InvalidWeights):
        millionths(shares)


def test_a_route_whose_weights_do_not_add_up_is_refused() -> None:
    with pytest.raises(InvalidWeights):
        Route("iris", (Split("iris_1", 10, (IP,)),))
