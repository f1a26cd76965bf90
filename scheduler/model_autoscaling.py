"""Model autoscaling in the scheduler process: Envoy's load reports in, scaled replica counts out.

:class:`ModelAutoscaling` is the :class:`apis.load.LoadListener` the composition root hands to the
load-reporting edge. The decisions are :mod:`scheduler.autoscaling`'s (pure); this module feeds it
the scheduler's view of each model and applies what it decides through
:meth:`scheduler.core.Scheduler.scale_model`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping

import structlog

from apis.load import LoadReport
from scheduler.autoscaling import Autoscaler, ModelScale, Thresholds, autoscales
from scheduler.core import Scheduler
from scheduler.state import ModelRecord, ModelState, ReplicaState

log = structlog.get_logger("meshserve.scheduler.autoscaling")

# The timer that notices idleness (the absence of reports): a quarter of the shortest window,
# within these bounds.
MIN_TICK_S = 0.05
MAX_TICK_S = 5.0


def model_scale(record: ModelRecord) -> ModelScale:
    latest = record.latest
    deployment = latest.spec.deploymentSpec
    return ModelScale(
        name=record.name,
        replicas=max(1, latest.desired_replicas),
        serving=len(latest.replicas_in(ReplicaState.Available)),
        min_replicas=deployment.minReplicas,
        max_replicas=deployment.maxReplicas,
        available=latest.state is ModelState.ModelAvailable,
        changed_at=latest.timestamp,
    )


def autoscaled_targets(models: Mapping[str, ModelRecord]) -> Iterable[str]:
    """Every version of each model that can autoscale (its spec sets minReplicas or maxReplicas):
    the model versions whose load Envoy must report (the autoscaler sums over every version)."""
    for record in models.values():
        if not record.deleted and record.versions and autoscales(record.latest.spec.deploymentSpec):
            yield from (version.versioned_name for version in record.versions)


class ModelAutoscaling:
    """Hears every load report, asks the autoscaler after each one and on a timer, applies."""

    def __init__(
        self, core: Scheduler, thresholds: Thresholds, clock: Callable[[], float] = time.time
    ) -> None:
        # Wall time: a model's ``changed_at`` is the wall-clock timestamp its status shows.
        self._core = core
        self._autoscaler = Autoscaler(thresholds, clock)
        shortest = min(thresholds.scale_up_window_s, thresholds.idle_window_s, thresholds.cooldown_s)
        self.tick_s = min(MAX_TICK_S, max(MIN_TICK_S, shortest / 4))

    def on_load(self, report: LoadReport) -> None:
        self._autoscaler.observe(report)
        self.apply()

    def apply(self) -> None:
        """Ask for decisions over every model now and apply each."""
        models = self._core.models
        self._autoscaler.forget(models)
        # Only models that autoscale: this runs on every load report, and decide() skips the rest.
        views = [
            model_scale(record)
            for record in models.values()
            if not record.deleted and autoscales(record.latest.spec.deploymentSpec)
        ]
        for decision in self._autoscaler.decide(views):
            log.info(
                "autoscaling",
                model=decision.model,
                direction=decision.direction.value,
                replicas=decision.replicas,
                reason=decision.reason,
            )
            self._core.scale_model(decision.model, decision.replicas)

    async def run(self) -> None:
        """Apply on a timer until cancelled (idleness shows as no reports at all)."""
        while True:
            await asyncio.sleep(self.tick_s)
            self.apply()
