"""The engine's Chainer follower on a Delete: a pipeline that moved to another engine keeps its
topics; one that was unloaded loses them when ``cleanTopicsOnDelete`` asks (decision 0022)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from apis.engine_gateway import parse_gateway_metadata
from apis.mlops.chainer import chainer_pb2
from apis.mlops.scheduler import scheduler_pb2
from pipelines.engine.control import ChainerFollower
from pipelines.model import Pipeline

Response = scheduler_pb2.PipelineStatusResponse


class FakeScheduler:
    """Answers ``PipelineStatus`` with one canned response, or fails like an unreachable scheduler."""

    def __init__(self, operation: int | None) -> None:
        self.operation = operation

    def PipelineStatus(self, request: Any, timeout: float) -> AsyncIterator[Response]:
        return self._answer(request.name)

    async def _answer(self, name: str) -> AsyncIterator[Response]:
        if self.operation is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
            )
        yield Response(pipelineName=name, operation=self.operation)  # type: ignore[arg-type]


async def stop_with(operation: int | None) -> list[tuple[str, bool]]:
    stopped: list[tuple[str, bool]] = []

    async def start(_: Pipeline) -> None:
        raise AssertionError("not started here")

    async def stop(name: str, clean: bool) -> None:
        stopped.append((name, clean))

    follower = ChainerFollower("engine-0", "127.0.0.1:1", None, start, stop, ("127.0.0.1", 9010, 9011))
    follower.versions["p"] = 1
    follower._clean["p"] = True  # the spec asked for cleanTopicsOnDelete
    delete = chainer_pb2.PipelineUpdateMessage(op=chainer_pb2.PipelineUpdateMessage.Delete, pipeline="p")
    assert await follower._apply(FakeScheduler(operation), delete) == (True, "pipeline stopped")  # type: ignore[arg-type]
    assert follower.versions == {}
    return stopped


@pytest.mark.parametrize(
    ("operation", "clean"),
    [
        (Response.PipelineCreate, False),  # still loaded: it moved, another engine uses its topics
        (Response.PipelineDelete, True),  # unloaded: its topics go
        (None, False),  # the scheduler cannot tell: keep them
    ],
)
async def test_topics_are_deleted_only_when_the_pipeline_was_unloaded(
    operation: int | None, clean: bool
) -> None:
    assert await stop_with(operation) == [("p", clean)]


def test_the_gateway_address_is_sent_as_metadata() -> None:
    async def noop(*_: Any) -> None:
        return None

    follower = ChainerFollower("engine-0", "127.0.0.1:1", None, noop, noop)
    assert follower._metadata is None
    follower.register_gateway("10.0.0.7", 19_010, 19_011)
    assert parse_gateway_metadata(follower._metadata or ()) == ("10.0.0.7", 19_010, 19_011)
