"""How long a consumer's next fetch may wait at the broker: short while records flow, long at idle.

Tansu, the embedded broker, answers a fetch when its wait (``fetch.max.wait.ms``) runs out, not when
a record arrives, so every hop through it took half that wait on average: about 250 ms at
aiokafka's default of 500 ms (a Kafka cluster answers at once). A short wait for every consumer
costs idle CPU in every component instead (20 ms: 19.7 → 250 ms/s, docs/benchmarks.md). So the wait
follows the traffic: once a poll returned records, the next fetches wait at most ``BUSY_WAIT_MS``,
and once nothing has arrived for ``BUSY_HOLD_S`` they wait the configured time again. Under traffic
a hop costs about half the short wait; at idle the fetch rate is what it was; the first record
after an idle spell may still wait up to the configured time (decision 0035).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

BUSY_WAIT_MS = 10
BUSY_HOLD_S = 1.0


class FetchPacing:
    """The fetch wait for the next fetch, from whether the last poll returned records."""

    def __init__(self, idle_wait_ms: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_wait_ms = idle_wait_ms
        self._busy_wait_ms = min(BUSY_WAIT_MS, idle_wait_ms)  # never longer than configured
        self._busy_until = -math.inf
        self._clock = clock

    def after_poll(self, got_records: bool) -> int:
        now = self._clock()
        if got_records:
            self._busy_until = now + BUSY_HOLD_S
        return self._busy_wait_ms if now < self._busy_until else self.idle_wait_ms
