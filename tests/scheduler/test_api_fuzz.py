"""Property tests over the scheduler's gRPC API, served in-process (issue 8, fuzzing).

The real scheduler (``SchedulerApp``: servicers, status mapping, receive limit, SQLite store) on
free ports, with one agent registered so that valid models get placed. Random names, numbers and
nested specs: every call ends with one of the expected
status codes, what the shared validation refuses is ``INVALID_ARGUMENT``, and a refused call changes
nothing a client can see. Budgets come from the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apis import limits
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.validation import InvalidResource, validate_model, validate_name, validate_server
from scheduler.app import SchedulerApp, SchedulerConfig
from stack.ports import free_ports
from tests.scheduler.fakes import subscribe

if TYPE_CHECKING:
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

# One scheduler and channel per test function, shared by all of its examples (they are independent:
# each compares the state right before and right after its own call).
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT

UINT32 = st.one_of(
    st.integers(0, 3),
    st.sampled_from([limits.MAX_REPLICAS, limits.MAX_REPLICAS + 1, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
NAMES = st.one_of(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    st.sampled_from(["iris", "mlserver", "iris\n", "Iris", "iris_1", "\u0456ris", "", "x" * 64]),
    st.text(max_size=70),
)
TEXT = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "gs://m/iris", "a\nb", "x" * (limits.MAX_URI_LENGTH + 1)])
)


@st.composite
def models(draw: st.DrawFn) -> scheduler_pb2.Model:
    model = scheduler_pb2.Model()
    model.meta.name = draw(NAMES)
    if draw(st.booleans()):
        model.meta.kubernetesMeta.generation = draw(
            st.one_of(st.integers(-2, 3), st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, -(2**63)]))
        )
        model.meta.kubernetesMeta.namespace = draw(NAMES)
    spec = model.modelSpec
    spec.uri = draw(st.one_of(st.just("gs://models/iris"), TEXT))
    spec.requirements.extend(draw(st.lists(st.one_of(st.just("sklearn"), NAMES), max_size=4)))
    spec.memoryBytes = draw(st.one_of(st.integers(0, 10**6), st.sampled_from([2**50, 2**50 + 1, 2**64 - 1])))
    if draw(st.booleans()):
        spec.server = draw(st.one_of(st.just("mlserver"), NAMES))
    for name, value in draw(st.lists(st.tuples(TEXT, TEXT), max_size=3)):
        spec.parameters.add(name=name, value=value)
    if draw(st.booleans()):
        spec.modelRuntimeInfo.mlserver.parallelWorkers = draw(UINT32)
    choice = draw(st.sampled_from(["none", "explainer", "llm"]))
    if choice == "explainer":
        spec.explainer.type = draw(TEXT)
        spec.explainer.modelRef = draw(NAMES)
    elif choice == "llm":
        spec.llm.pipelineRef = draw(NAMES)
    if draw(st.booleans()):
        deployment = model.deploymentSpec
        deployment.replicas, deployment.minReplicas, deployment.maxReplicas = draw(
            st.tuples(UINT32, UINT32, UINT32)
        )
    if draw(st.integers(0, 20)) == 0:  # now and then, a resource above the size limit
        spec.parameters.add(name="blob", value="x" * (limits.MAX_RESOURCE_BYTES + 1))
    return model


@st.composite
def notifies(draw: st.DrawFn) -> scheduler_pb2.ServerNotify:
    notify = scheduler_pb2.ServerNotify(
        name=draw(st.one_of(st.sampled_from(["mlserver", "other"]), NAMES)),
        expectedReplicas=draw(UINT32),
        minReplicas=draw(st.one_of(st.just(0), UINT32)),
        maxReplicas=draw(st.one_of(st.just(0), UINT32)),
        shared=draw(st.booleans()),
    )
    if draw(st.booleans()):
        notify.kubernetesMeta.generation = draw(st.integers(-(2**63), 2**63 - 1))
    return notify


@dataclass
class Api:
    stub: SchedulerAsyncStub
    app: SchedulerApp
    channel: grpc.aio.Channel


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The production composition root (servicers, status mapping, receive limit, SQLite store)."""
    scheduler_port, agent_port, xds_port, envoy_port = free_ports(4)
    config = SchedulerConfig(
        scheduler_port=scheduler_port,
        agent_port=agent_port,
        xds_port=xds_port,
        envoy_http_port=envoy_port,
        min_envoys=0,
        state_dir=tmp_path,
        log_level="warning",
    )
    app = SchedulerApp(config)
    await app.start()
    app.core.agent_connected(subscribe("mlserver", 0, memory=10**9))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{scheduler_port}", options=[limits.GRPC_RECEIVE_LIMIT]
        ) as channel:
            yield Api(scheduler_pb2_grpc.SchedulerStub(channel), app, channel)
    finally:
        await app.stop(grace=0)


Snapshot = tuple[
    list[tuple[str, list[tuple[int, bytes]]]],
    list[tuple[str, int]],
    list[tuple[str, int, int, int, bool]],
]


async def snapshot(api: Api) -> Snapshot:
    """The desired state: what a client declared (models, versions, specs; server declarations).

    Replica states and timestamps are left out: models accepted by earlier examples keep moving
    through placement in the background, which is progress, not a change made by a refused call.
    """
    stub = api.stub
    models = [
        (
            m.modelName,
            [(v.version, v.modelDefn.SerializeToString(deterministic=True)) for v in m.versions],
        )
        async for m in stub.ModelStatus(scheduler_pb2.ModelStatusRequest(allVersions=True), timeout=5)
        if not m.deleted  # an unload finishing (the record goes away) is progress, not a change
    ]
    servers = [
        (s.serverName, s.expectedReplicas)
        async for s in stub.ServerStatus(scheduler_pb2.ServerStatusRequest(), timeout=5)
    ]
    declared = [
        (s.name, s.expected_replicas, s.min_replicas, s.max_replicas, s.shared)
        for s in sorted(api.app.core.servers.values(), key=lambda s: s.name)
    ]
    return models, servers, declared


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return OK


def refused_locally(check: object, *resources: object) -> bool:
    try:
        for resource in resources:
            check(resource)  # type: ignore[operator]
    except InvalidResource:
        return True
    return False


@fixture_ok
@given(model=models())
async def test_load_model_accepts_or_refuses_without_change(api: Api, model: scheduler_pb2.Model) -> None:
    stub = api.stub
    before = await snapshot(api)
    code = await code_of(stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model), timeout=5))
    assert code in (OK, INVALID)
    if refused_locally(validate_model, model):
        assert code == INVALID
    if code == INVALID:
        assert await snapshot(api) == before


@fixture_ok
@given(batch=st.lists(notifies(), max_size=4))
async def test_server_notify_batches_apply_whole_or_not_at_all(
    api: Api, batch: list[scheduler_pb2.ServerNotify]
) -> None:
    stub = api.stub
    before = await snapshot(api)
    code = await code_of(stub.ServerNotify(scheduler_pb2.ServerNotifyRequest(servers=batch), timeout=5))
    assert code in (OK, INVALID)
    if refused_locally(validate_server, *batch):
        assert code == INVALID
    if code == INVALID:
        assert await snapshot(api) == before


@fixture_ok
@given(name=NAMES, all_versions=st.booleans())
async def test_status_calls_with_any_name_change_nothing(api: Api, name: str, all_versions: bool) -> None:
    stub = api.stub
    before = await snapshot(api)
    model_request = scheduler_pb2.ModelStatusRequest(
        model=scheduler_pb2.ModelReference(name=name), allVersions=all_versions
    )
    codes = set()
    for call in (
        stub.ModelStatus(model_request, timeout=5),
        stub.ServerStatus(scheduler_pb2.ServerStatusRequest(name=name), timeout=5),
    ):
        try:
            _ = [reply async for reply in call]
            codes.add(OK)
        except grpc.aio.AioRpcError as error:
            codes.add(error.code())
    assert codes <= {OK, INVALID, grpc.StatusCode.NOT_FOUND}
    if name and refused_locally(validate_name, name):
        assert codes == {INVALID}
    assert await snapshot(api) == before


@fixture_ok
@given(name=NAMES)
async def test_unload_of_an_unknown_or_bad_name_changes_nothing(api: Api, name: str) -> None:
    stub = api.stub
    if name in api.app.core.models:
        return
    before = await snapshot(api)
    request = scheduler_pb2.UnloadModelRequest(model=scheduler_pb2.ModelReference(name=name))
    code = await code_of(stub.UnloadModel(request, timeout=5))
    assert code in (INVALID, grpc.StatusCode.NOT_FOUND)
    assert await snapshot(api) == before


@fixture_ok
@given(data=st.binary(max_size=200))
async def test_arbitrary_bytes_are_refused_or_handled(api: Api, data: bytes) -> None:
    """Bytes that are no LoadModelRequest fail in gRPC's decoding; those that are, as above."""
    before = await snapshot(api)
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = api.channel.unary_unary(
        "/seldon.mlops.scheduler.Scheduler/LoadModel"
    )
    code = await code_of(raw(data, timeout=5))
    try:
        request = scheduler_pb2.LoadModelRequest.FromString(data)
    except Exception:  # noqa: BLE001 - any decode failure means gRPC cannot decode it either
        # grpc.aio answers a request it cannot decode with UNKNOWN before any servicer runs.
        assert code == grpc.StatusCode.UNKNOWN
        assert await snapshot(api) == before
        return
    assert code in (OK, INVALID)
    if refused_locally(validate_model, request.model):
        assert code == INVALID
    if code == INVALID:
        assert await snapshot(api) == before
