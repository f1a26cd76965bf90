"""The contract between where load is measured (Envoy, through xdsserver's load-reporting edge) and
what acts on it (the scheduler's autoscaler).

A leaf module like ``apis/routing.py``: value types and one Protocol, no Envoy protos. Envoy sees
every request to a model, so requests in flight per model version and per replica come from Envoy's
own counters, not from a proxy in the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from apis.routing import Endpoint


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """One model version on one model-server replica, as one Envoy saw it over one report interval.

    ``in_flight`` is the number of requests Envoy had outstanding to that replica for that version
    when it wrote the report (REST and gRPC together); ``completed`` how many it finished in the
    interval (successes and errors).
    """

    target: str  # the versioned name the model server knows, e.g. "iris_1"
    endpoint: Endpoint
    in_flight: int
    completed: int


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Everything one Envoy reported at once; ``source`` names that Envoy (its node id)."""

    source: str
    interval_s: float
    loads: tuple[ReplicaLoad, ...]


class LoadListener(Protocol):
    """Receives every report as it arrives; must not block (called on the event loop)."""

    def on_load(self, report: LoadReport) -> None: ...
