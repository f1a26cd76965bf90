"""Envoy's own time per open-loop run, from access-log lines (bench/envoy_times.py)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

from bench.envoy_times import OwnTimes


def _line(at: float, duration_us: int | None, upstream_us: int | None) -> str:
    start = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"start_time": start, "duration_us": duration_us, "upstream_us": upstream_us})


def test_each_run_gets_the_median_own_time_of_the_requests_in_its_window(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        "\n".join(
            [
                _line(100.2, 1000, 900),  # in the first run's warm-up: left out
                _line(101.0, 1000, 900),
                _line(101.5, 1300, 1000),
                _line(102.0, 5000, 4700),
                _line(102.5, 400, None),  # answered by Envoy itself (no model server): left out
                _line(110.0, 2000, 1950),
            ]
        )
    )
    times = OwnTimes({("gRPC", "static"): [(100.5, 102.6), (109.0, 111.0), (120.0, 121.0)]})
    medians = times.medians_ms({"static": log, "other": tmp_path / "missing.log"})
    first, second, empty = medians[("gRPC", "static")]
    assert (first, second) == (0.3, 0.05)
    assert math.isnan(empty)  # a run whose window holds no request has no figure, not zero
