"""A resource the scheduler accepts always reaches the agent (issue 8, item 2).

Before the limits in apis/limits.py, a 5 MiB parameter was accepted by the scheduler (64 MiB receive
limit) and sent to the agent, whose channel refused anything above gRPC's default 4 MiB: the agent
re-subscribed forever. Now a model at the resource size limit loads and serves, and one above it
is refused before anything is stored or sent.
"""

from __future__ import annotations

import grpc
import pytest

from apis import limits
from apis.mlops.scheduler import scheduler_pb2
from tests.e2e.conftest import Stack, iris_model

NAME = "limit-iris"


def _with_blob(size: int) -> scheduler_pb2.Model:
    model = iris_model(NAME)
    model.modelSpec.parameters.add(name="blob", value="x" * size)
    return model


def _at_limit() -> scheduler_pb2.Model:
    """The largest model the scheduler accepts (its serialized size is exactly the limit)."""
    model = _with_blob(0)
    model.modelSpec.parameters[0].value = "x" * (limits.MAX_RESOURCE_BYTES - model.ByteSize() - 8)
    while model.ByteSize() < limits.MAX_RESOURCE_BYTES:
        model.modelSpec.parameters[0].value += "x"
    assert model.ByteSize() == limits.MAX_RESOURCE_BYTES
    return model


async def test_a_model_at_the_size_limit_reaches_the_agent_and_serves(stack: Stack) -> None:
    model = _at_limit()
    await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=10)
    try:
        status = await stack.wait_state(NAME, "ModelAvailable", timeout=90)
        # The whole spec went through (the agent's runtime info adds a few bytes to what is stored).
        stored = status.versions[-1].modelDefn.modelSpec.parameters
        assert stored[0].value == model.modelSpec.parameters[0].value
        response = await stack.infer(NAME, path_model=NAME)
        assert response.status == 200
        assert response.headers["x-seldon-route"] == f":{NAME}_1:"
    finally:
        unload = scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=NAME))
        await stack.scheduler.UnloadModel(unload, timeout=10)
        await stack.wait_gone(NAME, timeout=60)


async def test_one_byte_more_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    model = _at_limit()
    model.modelSpec.parameters[0].value += "x"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {limits.MAX_RESOURCE_BYTES} bytes" in (error.value.details() or "")
    assert await stack.model_status(NAME) is None
