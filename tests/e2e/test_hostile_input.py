"""Hostile and clumsy input against the real stack changes nothing it should not (issue 8).

Data plane: only inference reaches MLServer through Envoy; its repository API (load/unload behind
the scheduler's back) is 404 over REST and UNIMPLEMENTED over gRPC, with or without a
``seldon-model`` header, and the model keeps answering. Control plane: the scheduler's gRPC API
itself (not the CLI, which validates first) refuses bad names, huge numbers, oversize resources,
empty requests and mixed batches with INVALID_ARGUMENT, and the declared state stays as it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest

from apis import limits
from apis.mlops.scheduler import scheduler_pb2
from apis.v2_dataplane import v2_dataplane_pb2
from tests.e2e.conftest import IRIS_IN, Stack, iris_model
from xdsserver.listener import NOT_INFERENCE

MODEL = "hostile-iris"
VERSIONED = f"{MODEL}_1"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MIB = 1024 * 1024
GRPC_INFER = v2_dataplane_pb2.ModelInferRequest(
    model_name=MODEL,
    inputs=[
        v2_dataplane_pb2.ModelInferRequest.InferInputTensor(
            name="input",
            datatype="FP32",
            shape=[1, 4],
            contents=v2_dataplane_pb2.InferTensorContents(fp32_contents=[1, 2, 3, 4]),
        )
    ],
)


@pytest.fixture(scope="module")
async def model(stack: Stack) -> AsyncIterator[str]:
    await stack.scheduler.LoadModel(scheduler_pb2.LoadModelRequest(model=iris_model(MODEL)), timeout=5)
    await stack.wait_state(MODEL, "ModelAvailable")
    yield MODEL
    await stack.scheduler.UnloadModel(
        scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=MODEL)), timeout=5
    )
    await stack.wait_gone(MODEL)


async def still_answers(stack: Stack) -> None:
    response = await stack.infer(MODEL, path_model=MODEL)
    assert response.status == 200, response.status
    assert response.headers["x-seldon-route"] == f":{VERSIONED}:"
    reply = await stack.inference.ModelInfer(GRPC_INFER, metadata=(("seldon-model", MODEL),), timeout=10)
    assert reply.model_name == VERSIONED
    status = await stack.model_status(MODEL)
    assert status is not None
    assert scheduler_pb2.ModelStatus.ModelState.Name(status.versions[-1].state.state) == "ModelAvailable"


# -- data plane: only inference reaches the model servers ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v2/repository/models/{VERSIONED}/unload"),
        ("POST", f"/v2/repository/models/{VERSIONED}/load"),
        ("POST", "/v2/repository/index"),
        ("POST", f"/v2/models/{MODEL}/infer/../../../repository/models/{VERSIONED}/unload"),
        ("POST", f"/v2/models/{MODEL}/versions/1/../../../../repository/models/{VERSIONED}/unload"),
        ("POST", f"/v2/models/{MODEL}/unload"),
        ("GET", "/v2/health/live"),
        ("GET", "/v2"),
        ("GET", "/metrics"),
    ],
)
@pytest.mark.parametrize("header", [True, False], ids=["with-seldon-model", "path-only"])
async def test_repository_and_other_rest_paths_are_404_through_envoy(
    stack: Stack, model: str, method: str, path: str, header: bool
) -> None:
    headers = {"seldon-model": model} if header else {}
    url = stack.url + path
    async with stack.http.request(method, url, headers=headers, json={}, skip_auto_headers=()) as response:
        body = await response.text()
        assert response.status == 404, (path, response.status)
        # Envoy answered itself (the listener's refusal, or no route): nothing came from MLServer.
        assert body in ("", NOT_INFERENCE), body
        assert not any(key.lower().startswith("ce-") for key in response.headers)
    await still_answers(stack)


async def test_the_oip_model_endpoints_still_pass(stack: Stack, model: str) -> None:
    for path in (f"/v2/models/{model}", f"/v2/models/{model}/ready", f"/v2/models/{model}/versions/1/ready"):
        async with stack.http.get(stack.url + path, headers={"seldon-model": model}) as response:
            assert response.status == 200, (path, response.status, await response.text())
    async with stack.http.post(f"{stack.url}/v2/models/{model}/versions/1/infer", json=IRIS_IN) as response:
        body = json.loads(await response.read())
        assert response.status == 200
        assert body["model_name"] == VERSIONED


def _unload_request(name: str) -> bytes:
    # RepositoryModelUnloadRequest {string model_name = 1}: the message MLServer's repository API takes.
    encoded = name.encode()
    return b"\x0a" + bytes([len(encoded)]) + encoded


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload",
        "/inference.GRPCInferenceService/ServerMetadata",
    ],
)
@pytest.mark.parametrize("header", [True, False], ids=["with-seldon-model", "no-metadata"])
async def test_grpc_repository_methods_are_unimplemented_through_envoy(
    stack: Stack, model: str, method: str, header: bool
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.config.http_port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        metadata = (("seldon-model", model),) if header else ()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(_unload_request(VERSIONED), metadata=metadata, timeout=10)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED, (method, error.value)
    await still_answers(stack)


async def test_allowed_grpc_methods_still_pass(stack: Stack, model: str) -> None:
    metadata = (("seldon-model", model),)
    ready = await stack.inference.ModelReady(
        v2_dataplane_pb2.ModelReadyRequest(name=model), metadata=metadata, timeout=10
    )
    assert ready.ready
    meta = await stack.inference.ModelMetadata(
        v2_dataplane_pb2.ModelMetadataRequest(name=model), metadata=metadata, timeout=10
    )
    assert meta.name == VERSIONED
    live = await stack.inference.ServerLive(
        v2_dataplane_pb2.ServerLiveRequest(), metadata=metadata, timeout=10
    )
    assert live.live


# -- control plane: the scheduler API refuses bad input and changes nothing --------------------------


Snapshot = tuple[list[tuple[str, list[tuple[int, bytes]]]], list[tuple[str, int]]]


async def declared(stack: Stack) -> Snapshot:
    """Every model (versions and their specs) and server (declared replicas), as the API lists them.

    Models being deleted are left out: an earlier test's unload finishing (the record goes away)
    is progress in the background, not a change made by the refused call.
    """
    models = [
        (
            m.modelName,
            [(v.version, _declared_spec(v.modelDefn)) for v in m.versions],
        )
        async for m in stack.scheduler.ModelStatus(
            scheduler_pb2.ModelStatusRequest(allVersions=True), timeout=5
        )
        if not m.deleted
    ]
    servers = [
        (s.serverName, s.expectedReplicas)
        async for s in stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest(), timeout=5)
    ]
    return models, servers


def _declared_spec(model: scheduler_pb2.Model) -> bytes:
    """The spec as the user declared it: the runtime info an agent reports on LOADED is progress."""
    copy = scheduler_pb2.Model()
    copy.CopyFrom(model)
    copy.modelSpec.ClearField("modelRuntimeInfo")
    return copy.SerializeToString(deterministic=True)


async def refused(stack: Stack, call: object, match: str = "") -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == INVALID, error.value
    details = error.value.details() or ""
    assert match in details, details
    return details


def _load(model: scheduler_pb2.Model) -> scheduler_pb2.LoadModelRequest:
    return scheduler_pb2.LoadModelRequest(model=model)


def _big(size: int) -> scheduler_pb2.Model:
    built = iris_model("hostile-big")
    built.modelSpec.parameters.add(name="blob", value="x" * size)
    return built


def _replicas(value: int) -> scheduler_pb2.Model:
    built = iris_model("hostile-many")
    built.deploymentSpec.replicas = value
    return built


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (scheduler_pb2.LoadModelRequest(), "model name is empty"),
        (_load(iris_model("iris\n")), "DNS-1123"),
        (_load(iris_model("\u0456ris")), "DNS-1123"),
        (_load(_replicas(2**31)), "replicas (2147483648) is above the limit of 1000"),
        (_load(_replicas(limits.MAX_REPLICAS + 1)), "above the limit"),
        (_load(_big(5 * MIB)), "bytes serialized; the limit is 1048576"),
        (_load(iris_model("hostile-uri", uri="gs://x/" + "y" * limits.MAX_URI_LENGTH)), "storageUri is"),
        (
            _load(iris_model("hostile-req", requirements=[f"c{i}" for i in range(100)])),
            "requirements has 100",
        ),
    ],
    ids=["empty", "newline", "lookalike", "2**31-replicas", "1001-replicas", "5MiB", "long-uri", "100-reqs"],
)
async def test_load_model_refuses_bad_input_and_changes_nothing(
    stack: Stack, request_: scheduler_pb2.LoadModelRequest, match: str
) -> None:
    before = await declared(stack)
    await refused(stack, stack.scheduler.LoadModel(request_, timeout=10), match)
    assert await declared(stack) == before


async def test_a_message_above_the_receive_limit_is_refused_by_grpc(stack: Stack) -> None:
    before = await declared(stack)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stack.scheduler.LoadModel(_load(_big(limits.MAX_MESSAGE_BYTES + 1)), timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await declared(stack) == before


def _notify(
    name: str, replicas: int = 0, minReplicas: int = 0, maxReplicas: int = 0
) -> scheduler_pb2.ServerNotify:
    return scheduler_pb2.ServerNotify(
        name=name, expectedReplicas=replicas, minReplicas=minReplicas, maxReplicas=maxReplicas, shared=True
    )


@pytest.mark.parametrize(
    ("servers", "match"),
    [
        ([_notify("mlserver", 2**31)], "replicas (2147483648) is above the limit"),
        ([_notify("mlserver", 1, maxReplicas=2**32 - 1)], "maxReplicas"),
        ([_notify("mlserver\n", 1)], "DNS-1123"),
        ([_notify("", 1)], "server name is empty"),
        ([_notify("hostile-good", 0), _notify("hostile-bad", 2**31)], "hostile-bad"),
        ([_notify("mlserver", 5), _notify("hostile-bad", 3, minReplicas=4)], "below minReplicas"),
    ],
    ids=["2**31", "max-uint32", "newline", "empty", "mixed-new", "mixed-existing"],
)
async def test_server_notify_refuses_bad_values_and_whole_batches(
    stack: Stack, servers: list[scheduler_pb2.ServerNotify], match: str
) -> None:
    before = await declared(stack)
    request = scheduler_pb2.ServerNotifyRequest(servers=servers)
    await refused(stack, stack.scheduler.ServerNotify(request, timeout=10), match)
    after = await declared(stack)
    assert after == before
    assert "hostile-good" not in {name for name, _ in after[1]}


@pytest.mark.parametrize("name", ["iris\n", "Iris", "iris_1", "\u0456ris", "x" * 64, "../etc", "a b"])
async def test_status_and_unload_calls_refuse_bad_names(stack: Stack, name: str) -> None:
    before = await declared(stack)
    reference = scheduler_pb2.ModelReference(name=name)
    model_status = stack.scheduler.ModelStatus(scheduler_pb2.ModelStatusRequest(model=reference), timeout=5)
    server_status = stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest(name=name), timeout=5)
    for stream in (model_status, server_status):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            _ = [reply async for reply in stream]
        assert error.value.code() == INVALID, error.value
    unload = scheduler_pb2.UnloadModelRequest(model=reference)
    await refused(stack, stack.scheduler.UnloadModel(unload, timeout=5))
    assert await declared(stack) == before


async def test_server_status_still_answers_after_refused_huge_counts(stack: Stack) -> None:
    """The bug this guards: 2**31 replicas was accepted, persisted, and broke ServerStatus."""
    huge = scheduler_pb2.ServerNotifyRequest(servers=[_notify("mlserver", 2**31)])
    await refused(stack, stack.scheduler.ServerNotify(huge, timeout=10))
    servers = [s async for s in stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest(), timeout=5)]
    assert "mlserver" in {s.serverName for s in servers}
    assert all(-1 <= s.expectedReplicas <= limits.MAX_REPLICAS for s in servers)  # -1: not declared
