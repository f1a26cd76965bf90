"""A list of callbacks for one kind of change: subscribe, unsubscribe, notify in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Listeners(Generic[T]):
    """Callbacks called with each change, in subscription order. Event-loop only."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[T], None]] = []

    def add(self, listener: Callable[[T], None]) -> Callable[[], None]:
        """Subscribe ``listener``; returns the call that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, change: T) -> None:
        # Over a copy: a listener may unsubscribe (or subscribe another) while it is called.
        for listener in list(self._listeners):
            listener(change)
