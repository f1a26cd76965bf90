"""Session-wide test settings: the hypothesis budgets (issue 8, fuzzing).

``ci`` (the default, run by ``make test``) keeps every property test to a bounded budget; ``fuzz``
(``make fuzz``, or ``HYPOTHESIS_PROFILE=fuzz``) runs each one far longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.kafka_broker import TansuBroker

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
# Failing examples are replayed first on the next run; kept with pytest's cache (git-ignored).
_DATABASE = DirectoryBasedExampleDatabase(".pytest_cache/hypothesis")
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=_SLOW_OK, database=_DATABASE
)
settings.register_profile(
    "fuzz",
    max_examples=5_000,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    database=_DATABASE,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A real Kafka-protocol broker (Tansu) on a free port, for one test (tests/kafka_broker.py)."""
    broker = TansuBroker(tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
