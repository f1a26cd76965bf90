"""Graph helpers on step names, knowing nothing of pipelines: cycle detection, deterministic."""

from __future__ import annotations

from collections.abc import Mapping, Set


def find_cycle(edges: Mapping[str, Set[str]]) -> list[str] | None:
    """One cycle of ``edges`` (node -> the nodes it reads from) as a list of nodes, or None.

    Deterministic (nodes and edges are visited in name order) so an error names the same cycle
    every time; iterative, so a long chain cannot exhaust the recursion limit.
    """
    done: set[str] = set()
    for start in sorted(edges):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(edges.get(start, ())))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif following in on_path:
                return path[path.index(following) :]
            elif following not in done:
                path.append(following)
                on_path.add(following)
                stack.append(iter(sorted(edges.get(following, ()))))
    return None
