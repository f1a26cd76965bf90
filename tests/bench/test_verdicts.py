"""How the benchmarks judge a noisy latency bound: the sign-test interval of a median."""

from __future__ import annotations

from bench.dataplane import p50_goal
from bench.loadgen import median_interval


def test_the_median_interval_is_the_sign_tests() -> None:
    assert median_interval([float(v) for v in range(1, 9)]) == (2.0, 7.0)  # 8 values: 93 %
    assert median_interval([float(v) for v in range(50)]) == (18.0, 31.0)  # ranks 19 and 32
    assert median_interval([5.0, 1.0]) == (1.0, 5.0)  # too few: the whole range


def test_a_bound_is_met_or_missed_only_when_the_whole_interval_says_so() -> None:
    inside = p50_goal("p50", 0.05, [0.0, 0.05, 0.1, 0.02, 0.08, 0.04, 0.06, 0.03], bound=0.2)
    above = p50_goal("p50", 0.35, [0.3, 0.35, 0.4, 0.32, 0.38, 0.34, 0.36, 0.33], bound=0.2)
    spans = p50_goal("p50", 0.15, [-0.5, 0.1, 0.15, 0.9, 0.12, 0.6, 0.18, -0.2], bound=0.2)
    assert (inside.met, above.met, spans.met) == (True, False, None)
    assert spans.verdict == "**inconclusive** (the interval spans the bound; the median: met)"
    assert "90 % interval [-0.200, +0.600]" in spans.measured
