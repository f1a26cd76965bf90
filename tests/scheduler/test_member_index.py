"""The owner ↔ member index experiments and pipelines use to hear only about their own members."""

from __future__ import annotations

from scheduler.member_index import MemberIndex


def test_set_replaces_an_owners_members_and_remove_forgets_it() -> None:
    index: MemberIndex[str] = MemberIndex()
    index.set("p1", ["a", "b"])
    index.set("p2", ["b"])
    assert [index.owners(m) for m in "abc"] == [{"p1"}, {"p1", "p2"}, set()]
    index.set("p1", ["c"])  # a new version calls other models
    assert [index.owners(m) for m in "abc"] == [set(), {"p2"}, {"p1"}]
    index.remove("p2")
    index.remove("never-set")
    assert (index.owners("b"), index._owners) == (frozenset(), {"c": {"p1"}})


def test_owners_is_a_snapshot_callers_may_keep_while_the_index_changes() -> None:
    index: MemberIndex[tuple[int, str]] = MemberIndex()
    index.set("e", [(0, "iris")])
    owners = index.owners((0, "iris"))
    index.remove("e")
    assert owners == {"e"} and index.owners((0, "iris")) == frozenset()
