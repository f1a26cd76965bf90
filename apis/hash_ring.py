"""Consistent hashing shared by every process: ``hashring`` rings (md5, equal weights) over names.

A key's order of nodes depends only on the key and the set of nodes, so every process (the
scheduler placing models and pipelines, the model gateways splitting partitions) computes the same
answer, a restart gives the same answer, and adding or removing one of N nodes moves about 1/N of
the keys.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable

from hashring import HashRing  # type: ignore[import-untyped]


@functools.lru_cache(maxsize=256)
def _ring(nodes: frozenset[str]) -> HashRing:
    # Sorted so that the (rare) md5 point collisions resolve the same way in every process.
    return HashRing(sorted(nodes))


def ring_order(key: str, nodes: Iterable[str]) -> list[str]:
    """``nodes`` in the order met walking the ring clockwise from the hash of ``key``."""
    distinct = frozenset(nodes)
    if not distinct:
        return []
    # The walk yields each node once; stop at the last one instead of going round the whole ring.
    return list(itertools.islice(_ring(distinct).iterate_nodes(key), len(distinct)))
