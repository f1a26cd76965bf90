"""Exponential back-off with jitter for re-subscribing to the scheduler."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, initial_s: float = 0.2, max_s: float = 5.0, jitter: float = 0.2) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._jitter = jitter
        self._next_s = initial_s

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the base, up to ``max_s``."""
        base = self._next_s
        self._next_s = min(self._max_s, base * 2)
        # Jitter spreads the reconnects of many agents after a scheduler restart.
        return min(self._max_s, base * random.uniform(1 - self._jitter, 1 + self._jitter))

    def reset(self) -> None:
        self._next_s = self._initial_s
