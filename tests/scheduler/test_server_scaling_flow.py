"""Server scaling through the core and the SubscribeServerStatus stream: the request a controller
gets, and a model placed once the controller declared the new count and the replica registered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from apis.mlops.scheduler import scheduler_pb2
from scheduler.api import SchedulerService
from scheduler.state import ModelState
from tests.scheduler.fakes import Harness, model, pending_ops

StatusType = scheduler_pb2.ServerStatusResponse


def declare(harness: Harness, replicas: int) -> None:
    harness.scheduler.notify_servers(
        [
            scheduler_pb2.ServerNotify(
                name="auto", expectedReplicas=replicas, minReplicas=1, maxReplicas=3, shared=True
            )
        ]
    )


async def next_of(
    stream: AsyncIterator[scheduler_pb2.ServerStatusResponse],
) -> scheduler_pb2.ServerStatusResponse:
    return await asyncio.wait_for(anext(stream), 1)


async def test_a_model_short_of_replicas_sends_a_scaling_request_and_lands_on_the_new_replica(
    harness: Harness,
) -> None:
    declare(harness, 1)
    link0 = await harness.connect("auto", 0, capabilities=("sklearn", "auto"))
    service = SchedulerService(harness.scheduler, harness.experiments, harness.pipelines)  # type: ignore[abstract]
    context: Any = None
    request = scheduler_pb2.ServerSubscriptionRequest(subscriberName="t")
    stream = cast(AsyncGenerator[StatusType], service.SubscribeServerStatus(request, context))
    first = await next_of(stream)
    assert (first.type, first.serverName, first.expectedReplicas) == (StatusType.StatusUpdate, "auto", 1)

    await harness.load(model("wide", replicas=2, requirements=("sklearn", "auto")))
    assert harness.state("wide") is ModelState.ScheduleFailed
    assert [(r.server, r.replicas) for r in harness.scheduler.scale_servers()] == [("auto", 2)]
    while (message := await next_of(stream)).type != StatusType.ScalingRequest:
        pass
    assert (message.serverName, message.expectedReplicas) == ("auto", 2)
    assert message.scalingReason == "model wide wants 2 replicas, server has 1"
    assert harness.scheduler.scale_servers() == []  # asked once, not on every tick

    declare(harness, 2)  # what the controller does, then its new replica registers
    link1 = await harness.connect("auto", 1, capabilities=("sklearn", "auto"))
    assert pending_ops(link0) == [("LOAD_MODEL", "wide", 1)]
    assert pending_ops(link1) == [("LOAD_MODEL", "wide", 1)]
    await stream.aclose()
