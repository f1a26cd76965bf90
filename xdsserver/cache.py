"""Per-resource versioned cache of Envoy resources (the xDS "linear cache").

Contract:
- Only the scheduler's route publisher mutates the cache, through :meth:`ResourceCache.apply`.
- Every resource carries its own version: a global counter value taken when it last changed, so a
  change costs work proportional to the resources it touches, never to the cache's size.
- A removal deletes the entry (no tombstone is kept, so the cache is bounded by what is live) and
  takes a version of its own for the returned requirement; streams know what they sent, and send a
  removal for any sent name the cache no longer has.
- Watchers are called synchronously, on the event loop, with the names that changed per type; they
  must only record the names (stream servers send later, in their own tasks).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

Changes = Mapping[str, set[str]]  # type URL -> names whose version moved
Watcher = Callable[[Changes], None]


@dataclass(frozen=True, slots=True)
class Entry:
    version: int
    resource: any_pb2.Any | None  # always set in the cache; None only in hand-built entries
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Requirement:
    """A resource version that an Envoy must have ACKed (for removals: the removal's version)."""

    type_url: str
    name: str
    version: int
    removed: bool = False


class ResourceCache:
    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._entries: dict[str, dict[str, Entry]] = {}
        self._watchers: list[Watcher] = []

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        self._watchers.append(watcher)
        return lambda: self._watchers.remove(watcher)

    def get(self, type_url: str, name: str) -> Entry | None:
        return self._entries.get(type_url, {}).get(name)

    def live(self, type_url: str) -> dict[str, Entry]:
        """Every present (non-removed) resource of a type."""
        return {n: e for n, e in self._entries.get(type_url, {}).items() if e.resource is not None}

    def apply(
        self,
        *,
        upserts: Iterable[tuple[str, str, Message]] = (),
        removals: Iterable[tuple[str, str]] = (),
    ) -> list[Requirement]:
        """Upsert ``(type_url, name, message)`` and remove ``(type_url, name)`` in one step.

        Returns the resulting version of every resource named (unchanged resources keep theirs,
        so waiting on them is free). Watchers hear only about real changes.
        """
        changed: dict[str, set[str]] = {}
        result: list[Requirement] = []
        for type_url, name, message in upserts:
            packed = any_pb2.Any()
            packed.Pack(message)
            digest = packed.value if len(packed.value) < 256 else _digest(packed.value)
            entry = self._entries.setdefault(type_url, {}).get(name)
            if entry is None or entry.resource is None or entry.digest != digest:
                entry = Entry(next(self._counter), packed, digest)
                self._entries[type_url][name] = entry
                changed.setdefault(type_url, set()).add(name)
            result.append(Requirement(type_url, name, entry.version))
        for type_url, name in removals:
            if self._entries.get(type_url, {}).pop(name, None) is not None:
                changed.setdefault(type_url, set()).add(name)
                result.append(Requirement(type_url, name, next(self._counter), removed=True))
        if changed:
            for watcher in list(self._watchers):
                watcher(changed)
        return result


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()
