"""The serving path with real components: scheduler → xDS → Envoy → MLServer, agent in between."""

from __future__ import annotations

import json

import grpc
import pytest

from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2
from tests.e2e.conftest import Stack, iris_model

ModelState = scheduler_pb2.ModelStatus.ModelState
GRPC_IRIS = v2_dataplane_pb2.ModelInferRequest(
    model_name="iris",
    inputs=[
        v2_dataplane_pb2.ModelInferRequest.InferInputTensor(
            name="input",
            datatype="FP32",
            shape=[1, 4],
            contents=v2_dataplane_pb2.InferTensorContents(fp32_contents=[1, 2, 3, 4]),
        )
    ],
)


async def load(stack: Stack, model: scheduler_pb2.Model) -> None:
    await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=5)


async def unload(stack: Stack, name: str) -> None:
    await stack.scheduler.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=name)), timeout=5
    )


async def grpc_infer(
    stack: Stack, model: str, request: v2_dataplane_pb2.ModelInferRequest = GRPC_IRIS
) -> v2_dataplane_pb2.ModelInferResponse:
    reply: v2_dataplane_pb2.ModelInferResponse = await stack.inference.ModelInfer(
        request, metadata=(("seldon-model", model),), timeout=10
    )
    return reply


async def test_load_infer_rest_and_grpc_then_unload(stack: Stack) -> None:
    await load(stack, iris_model("iris"))
    status = await stack.wait_state("iris", "ModelAvailable")
    version = status.versions[0]
    assert version.version == 1
    assert version.serverName == "mlserver"
    assert (
        scheduler_pb2.ModelReplicaStatus.ModelReplicaState.Name(version.modelReplicaState[0].state)
        == "Available"
    )
    assert version.state.availableReplicas == 1

    # Header routing, path ignored in favour of the header.
    response = await stack.infer("iris", path_model="anything")
    assert response.status == 200
    async with stack.http.post(
        f"{stack.url}/v2/models/anything/infer",
        json={"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]},
        headers={"seldon-model": "iris"},
    ) as r:
        body = await r.json()
        assert r.headers["x-seldon-route"] == ":iris_1:"
        assert r.headers["x-request-id"]
    assert body["model_name"] == "iris_1"
    assert body["outputs"][0]["data"] == [2]

    # Path routing with no header.
    async with stack.http.post(
        f"{stack.url}/v2/models/iris/infer",
        json={"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]},
    ) as r:
        assert r.status == 200
        assert (await r.json())["model_name"] == "iris_1"

    # gRPC through Envoy: the body's model_name is rewritten to the versioned name.
    reply = await grpc_infer(stack, "iris")
    assert reply.model_name == "iris_1"
    assert list(reply.outputs[0].contents.int64_contents) == [2]

    await unload(stack, "iris")
    await stack.wait_gone("iris")
    assert (await stack.infer("iris")).status == 404
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_infer(stack, "iris")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unknown_model_is_404_and_unimplemented(stack: Stack) -> None:
    assert (await stack.infer("nosuch")).status == 404
    assert (await stack.infer(None, path_model="nosuch")).status == 404
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await grpc_infer(stack, "nosuch")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_two_models_on_one_server(stack: Stack) -> None:
    await load(stack, iris_model("iris-a"))
    await load(stack, iris_model("iris-b"))
    a = await stack.wait_state("iris-a", "ModelAvailable")
    b = await stack.wait_state("iris-b", "ModelAvailable")
    assert a.versions[0].serverName == b.versions[0].serverName == "mlserver"
    for name in ("iris-a", "iris-b"):
        async with stack.http.post(
            f"{stack.url}/v2/models/{name}/infer",
            json={
                "inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP32", "data": [[1, 2, 3, 4]]}]
            },
        ) as r:
            assert (await r.json())["model_name"] == f"{name}_1"
    servers = [
        s async for s in stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest(name="mlserver"))
    ]
    assert servers[0].resources[0].numLoadedModels >= 2
    await unload(stack, "iris-a")
    await unload(stack, "iris-b")
    await stack.wait_gone("iris-a")
    await stack.wait_gone("iris-b")


async def test_unsatisfiable_requirement_is_schedule_failed_with_no_route(stack: Stack) -> None:
    await load(stack, iris_model("needs-gpu", requirements=["nonexistent"]))
    status = await stack.wait_state("needs-gpu", "ScheduleFailed")
    assert "nonexistent" in status.versions[0].state.reason
    assert (await stack.infer("needs-gpu")).status == 404
    await unload(stack, "needs-gpu")
    await stack.wait_gone("needs-gpu")


async def test_missing_artifact_fails_load_and_routes_nothing(stack: Stack) -> None:
    await load(stack, iris_model("ghost", uri="file:///nonexistent/path/to/model"))
    status = await stack.wait_state("ghost", "ModelFailed")
    assert (
        "does not exist" in status.versions[0].state.reason
        or "nonexistent" in status.versions[0].state.reason
    )
    assert (await stack.infer("ghost")).status == 404
    await unload(stack, "ghost")
    await stack.wait_gone("ghost")


@pytest.mark.parametrize(
    "model, message",
    [
        (iris_model("../x"), "invalid"),
        (iris_model("Iris"), "invalid"),
        (iris_model("a" * 300), "limit"),
        (iris_model("no-uri", uri=""), "storageUri"),
    ],
    ids=["path-traversal", "upper-case", "too-long", "missing-uri"],
)
async def test_bad_models_are_rejected_without_state_change(
    stack: Stack, model: scheduler_pb2.Model, message: str
) -> None:
    before = [
        json.dumps(str(s.modelName))
        async for s in stack.scheduler.ModelStatus(scheduler_pb2.ModelStatusRequest())
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await load(stack, model)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    after = [
        json.dumps(str(s.modelName))
        async for s in stack.scheduler.ModelStatus(scheduler_pb2.ModelStatusRequest())
    ]
    assert before == after


async def test_unload_unknown_model_is_not_found(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unload(stack, "never-loaded")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
