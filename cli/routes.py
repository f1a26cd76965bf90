"""Counting ``x-seldon-route`` tokens over repeated calls, printed the way the seldon CLI does."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from apis.names import ROUTE_HEADER

__all__ = ["ROUTE_HEADER", "count_routes", "format_route_map"]


def route_tokens(value: str) -> list[str]:
    """``":add10_1: :pipeline-add10.pipeline:"`` -> one token per hop (space-separated)."""
    return value.split()


def count_routes(counter: Counter[str], value: str | None) -> None:
    if value:
        counter.update(route_tokens(value))


def format_route_map(counts: Mapping[str, int]) -> str:
    """Go's ``fmt`` rendering of a map: keys sorted, ``map[:iris_1::50 :iris2_1::3]``."""
    return "map[" + " ".join(f"{key}:{counts[key]}" for key in sorted(counts)) + "]"
