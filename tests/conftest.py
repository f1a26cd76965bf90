"""Session-wide test settings: the hypothesis budgets (issue 8, fuzzing), and coverage kept to
our own processes.

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

from stack import processes
from stack.components import Component
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

# `make test` measures the Pythons the stack starts (pyproject's [tool.coverage.run] patch). MLServer
# runs none of our code, yet traced it served more than twice as slowly (the 100-model overcommit
# test: 42 s without, 90 s with), so the stacks that tests start run it unmeasured.
_COVERAGE_ENV = "COVERAGE_PROCESS_CONFIG"


@pytest.fixture(scope="session", autouse=True)
def mlserver_unmeasured() -> Iterator[None]:
    measured_env = processes.child_env

    def child_env(component: Component) -> dict[str, str]:
        env = measured_env(component)
        if Path(component.argv[0]).name == "mlserver":
            env.pop(_COVERAGE_ENV, None)
        return env

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processes, "child_env", child_env)
        yield


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A real Kafka-protocol broker (Tansu) on a free port, for one test (tests/kafka_broker.py)."""
    broker = TansuBroker(tmp_path / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
