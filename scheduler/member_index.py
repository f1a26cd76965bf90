"""Which owners (experiments, pipelines) name each member (a model, a pipeline).

A model's every state change is announced to the experiments and pipelines that use it. Walking
every experiment or pipeline for each announcement costs O(owners) per model event: with thousands
of pipelines loaded, a batch of model loads became quadratic. The index answers in O(1).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

M = TypeVar("M", bound=Hashable)


class MemberIndex(Generic[M]):
    """Owner name → the members it names, and back. ``set`` replaces an owner's members."""

    def __init__(self) -> None:
        self._members: dict[str, frozenset[M]] = {}
        self._owners: dict[M, set[str]] = {}

    def set(self, owner: str, members: Iterable[M]) -> None:
        self.remove(owner)
        named = frozenset(members)
        self._members[owner] = named
        for member in named:
            self._owners.setdefault(member, set()).add(owner)

    def remove(self, owner: str) -> None:
        for member in self._members.pop(owner, ()):
            owners = self._owners[member]
            owners.discard(owner)
            if not owners:
                del self._owners[member]

    def owners(self, member: M) -> frozenset[str]:
        return frozenset(self._owners.get(member, ()))
