"""Which clusters Envoy reports load for: those of the model versions someone consumes (decision 0015).

The scheduler (the composition root) hands over ``targets``, a callable naming the model versions
whose load it needs (the ones that autoscale), and calls :meth:`ReportScope.changed` whenever that
set may have changed. Both clusters (REST and gRPC) of each version are asked for.

Changes are debounced: ``changed`` only stamps the time (it runs on every model change: a burst of
10,000 loads must cost 10,000 stamps, not 10,000 recomputations). The list is recomputed at most
once per settled burst, when a stream asks whether an update is due: :data:`SETTLE_S` after the last
change, or :data:`MAX_DELAY_S` after the first unsent one if changes never stop. ``generation``
moves only when the list really changed, so a stream resends nothing for a change that moved no
cluster (most model changes: a replica came up, a model that does not autoscale loaded).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog

from xdsserver.clusters import cluster_names

log = structlog.get_logger("meshserve.xds.load")

# Quiet time after the last change before the new list goes out: a burst of loads is one update.
SETTLE_S = 1.0
# A change waits at most this long, even while changes keep coming.
MAX_DELAY_S = 30.0
# Two clusters per model version; 100,000 model versions is 10 times the benchmarked scale.
MAX_SCOPED_CLUSTERS = 200_000


class ReportScope:
    """The cluster names to ask Envoy for, recomputed lazily and debounced after changes."""

    def __init__(
        self, targets: Callable[[], Iterable[str]], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._targets = targets
        self._clock = clock
        self.generation = 0  # bumped each time the list moves
        self._clusters: tuple[str, ...] = ()
        # The first change not yet folded into the list. At start: long ago, so the first ask
        # computes the list at once (the scheduler restores its models after wiring this).
        self._pending_since: float | None = clock() - MAX_DELAY_S
        self._last_change = self._pending_since

    def changed(self) -> None:
        """The set of model versions may have changed (cheap: stamps the time only)."""
        now = self._clock()
        if self._pending_since is None:
            self._pending_since = now
        self._last_change = now

    def clusters(self) -> tuple[str, ...]:
        """The list as of the last settled change; ``generation`` tells whether it moved."""
        if self._pending_since is not None and self._due():
            self._pending_since = None
            fresh = self._compute()
            if fresh != self._clusters:
                self._clusters = fresh
                self.generation += 1
        return self._clusters

    def _due(self) -> bool:
        now = self._clock()
        pending_since = self._pending_since if self._pending_since is not None else now
        return now - self._last_change >= SETTLE_S or now - pending_since >= MAX_DELAY_S

    def _compute(self) -> tuple[str, ...]:
        names: list[str] = []
        for target in sorted(set(self._targets())):
            if len(names) >= MAX_SCOPED_CLUSTERS:
                log.warning("load report scope truncated", clusters_kept=MAX_SCOPED_CLUSTERS)
                break
            names.extend(cluster_names(target))
        return tuple(names)
