"""Envoy's own time per request, read from its access log (``xdsserver.listener.access_log``).

A request's own time in Envoy is its whole time there (first byte in to last byte out) minus the model
server's part (first byte sent upstream to last byte back). A client's p50 includes the model server,
whose run-to-run spread on this machine (about ±0.5 ms per pair of runs) hides a 0.1 ms difference
between two proxies in front of it; the proxies' own times leave it out. Figure 1's two Envoys write
the same log, and each open-loop run's window is recorded, so every run gets the median own time of
the requests it sent. Envoy buffers its log, so the lines are read once the Envoys have stopped.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.loadgen import median

Key = tuple[str, ...]  # the run's labels, its target's key last


@dataclass
class OwnTimes:
    """The wall-clock window of each open-loop run, by key, in the order they ran."""

    windows: dict[Key, list[tuple[float, float]]] = field(default_factory=dict)

    @contextlib.contextmanager
    def run(self, key: Key, warm_up: float) -> Iterator[None]:
        """Record the run's window, leaving out the generator's warm-up (not in its figures either)."""
        started = time.time() + warm_up
        yield
        self.windows.setdefault(key, []).append((started, time.time()))

    def medians_ms(self, logs: Mapping[str, Path]) -> dict[Key, list[float]]:
        """Per key, each run's median own time (ms), from the log of the run's target (``logs``)."""
        own = {target: _own_times(path) for target, path in logs.items()}
        result: dict[Key, list[float]] = {}
        for key, windows in self.windows.items():
            times = own.get(key[-1])
            if times is None:
                continue
            result[key] = [
                median([us for at, us in times if start <= at <= end]) / 1000  # NaN if none
                for start, end in windows
            ]
        return result


def _own_times(path: Path) -> list[tuple[float, float]]:
    """(start time, own µs) of every request in the log that reached a model server."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else ():
        entry = json.loads(line)
        whole, upstream = entry.get("duration_us"), entry.get("upstream_us")
        if isinstance(whole, int | float) and isinstance(upstream, int | float):
            started = datetime.fromisoformat(entry["start_time"]).timestamp()
            rows.append((started, float(whole - upstream)))
    return rows
