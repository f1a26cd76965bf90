from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2

from xdsserver.cache import Changes, Requirement, ResourceCache
from xdsserver.types import CLUSTER, SCOPED_ROUTE


def cluster(name: str, timeout_s: int = 5, padding: int = 0) -> cluster_pb2.Cluster:
    # ``padding`` makes the serialised message long enough to be compared by digest.
    return cluster_pb2.Cluster(name=name + "x" * padding, connect_timeout={"seconds": timeout_s})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, set[str]]] = []

    def __call__(self, changes: Changes) -> None:
        self.calls.append({t: set(names) for t, names in changes.items()})


def test_upsert_gives_each_resource_its_own_version() -> None:
    cache = ResourceCache()
    result = cache.apply(upserts=[(CLUSTER, "a", cluster("a")), (CLUSTER, "b", cluster("b"))])
    assert result == [Requirement(CLUSTER, "a", 1), Requirement(CLUSTER, "b", 2)]
    assert set(cache.live(CLUSTER)) == {"a", "b"}


def test_identical_upsert_keeps_the_version_and_notifies_nobody() -> None:
    cache, recorder = ResourceCache(), Recorder()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a", padding=300))])
    cache.watch(recorder)
    result = cache.apply(upserts=[(CLUSTER, "a", cluster("a", padding=300))])
    assert result == [Requirement(CLUSTER, "a", 1)]
    assert recorder.calls == []


def test_changed_upsert_moves_only_that_resources_version() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a")), (CLUSTER, "b", cluster("b"))])
    result = cache.apply(upserts=[(CLUSTER, "a", cluster("a", timeout_s=9))])
    assert result == [Requirement(CLUSTER, "a", 3)]
    entry = cache.get(CLUSTER, "b")
    assert entry is not None and entry.version == 2


def test_long_resources_are_compared_by_digest() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a", padding=300))])
    result = cache.apply(upserts=[(CLUSTER, "a", cluster("a", timeout_s=9, padding=300))])
    assert result == [Requirement(CLUSTER, "a", 2)]


def test_removal_deletes_the_entry_and_takes_a_new_version() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a"))])
    result = cache.apply(removals=[(CLUSTER, "a")])
    assert result == [Requirement(CLUSTER, "a", 2, removed=True)]
    assert cache.get(CLUSTER, "a") is None  # no tombstone: the cache holds only what is live
    assert cache.live(CLUSTER) == {}


def test_removing_twice_changes_nothing_the_second_time() -> None:
    cache, recorder = ResourceCache(), Recorder()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a"))])
    cache.apply(removals=[(CLUSTER, "a")])
    cache.watch(recorder)
    assert cache.apply(removals=[(CLUSTER, "a")]) == []
    assert recorder.calls == []


def test_removing_an_unknown_resource_requires_nothing() -> None:
    assert ResourceCache().apply(removals=[(CLUSTER, "never")]) == []


def test_re_adding_a_removed_resource_gets_a_new_version() -> None:
    cache = ResourceCache()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a"))])
    cache.apply(removals=[(CLUSTER, "a")])
    assert cache.apply(upserts=[(CLUSTER, "a", cluster("a"))]) == [Requirement(CLUSTER, "a", 3)]


def test_watchers_hear_the_changed_names_per_type_once_per_apply() -> None:
    cache, recorder = ResourceCache(), Recorder()
    cache.apply(upserts=[(CLUSTER, "same", cluster("same"))])
    cache.watch(recorder)
    cache.apply(
        upserts=[(CLUSTER, "same", cluster("same")), (CLUSTER, "new", cluster("new"))],
        removals=[(SCOPED_ROUTE, "never"), (CLUSTER, "same")],
    )
    assert recorder.calls == [{CLUSTER: {"new", "same"}}]


def test_unwatched_watchers_hear_nothing() -> None:
    cache, recorder = ResourceCache(), Recorder()
    unwatch = cache.watch(recorder)
    unwatch()
    cache.apply(upserts=[(CLUSTER, "a", cluster("a"))])
    assert recorder.calls == []
