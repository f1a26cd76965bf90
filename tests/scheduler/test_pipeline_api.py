"""Pipeline RPCs and the Chainer service over real gRPC, against the production composition root
(``SchedulerApp``: servicers, status mapping, SQLite store), with a fake dataflow engine client that
subscribes and answers over the wire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from apis import limits
from apis.mlops.chainer import chainer_pb2, chainer_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from scheduler.app import SchedulerApp, SchedulerConfig
from stack.ports import free_ports
from tests.scheduler.test_pipelines import chain

if TYPE_CHECKING:
    from apis.mlops.chainer.chainer_pb2_grpc import ChainerAsyncStub
    from apis.mlops.scheduler.scheduler_pb2_grpc import SchedulerAsyncStub

WAIT_S = 10.0
State = scheduler_pb2.PipelineVersionState
Update = chainer_pb2.PipelineUpdateMessage


def config(tmp_path: Path) -> SchedulerConfig:
    scheduler_port, agent_port, xds_port, envoy_port = free_ports(4)
    return SchedulerConfig(
        metrics_port=0,  # none: parallel tests would share the default port
        scheduler_port=scheduler_port,
        agent_port=agent_port,
        xds_port=xds_port,
        envoy_http_port=envoy_port,
        min_envoys=0,
        state_dir=tmp_path,
        log_level="warning",
    )


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[SchedulerApp, SchedulerAsyncStub, ChainerAsyncStub]]:
    app = SchedulerApp(config(tmp_path))
    await app.start()
    try:
        address = f"127.0.0.1:{app.config.scheduler_port}"
        async with grpc.aio.insecure_channel(address, options=[limits.GRPC_RECEIVE_LIMIT]) as channel:
            yield app, scheduler_pb2_grpc.SchedulerStub(channel), chainer_pb2_grpc.ChainerStub(channel)
    finally:
        await app.stop(grace=0)


async def status(
    stub: SchedulerAsyncStub, name: str, *, all_versions: bool = False
) -> scheduler_pb2.PipelineStatusResponse:
    request = scheduler_pb2.PipelineStatusRequest(subscriberName="test", name=name, allVersions=all_versions)
    [response] = [r async for r in stub.PipelineStatus(request, timeout=5)]
    return response


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.01)


def latest_status(response: scheduler_pb2.PipelineStatusResponse) -> str:
    return State.PipelineStatus.Name(response.versions[-1].state.status)


async def test_load_status_unload_over_grpc(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, stub, _chainer):
        await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=chain()), timeout=5)
        shown = await status(stub, "tfsimples")
        [item] = shown.versions
        assert (
            item.pipeline.name == "tfsimples" and item.pipeline.version == 1 and len(item.pipeline.uid) == 20
        )
        assert [s.name for s in item.pipeline.steps] == ["tfsimple1", "tfsimple2"]
        assert list(item.pipeline.steps[1].inputs) == ["tfsimple1.outputs"]  # normalised (§2.4)
        assert list(item.pipeline.output.steps) == ["tfsimple2.outputs"]
        assert item.state.status == State.PipelineCreate and not item.state.modelsReady
        assert shown.operation == scheduler_pb2.PipelineStatusResponse.PipelineCreate

        await stub.LoadPipeline(
            scheduler_pb2.LoadPipelineRequest(
                pipeline=chain(second_input="tfsimple1.outputs", allowCycles=True)
            ),
            timeout=5,
        )
        assert [
            v.pipeline.version for v in (await status(stub, "tfsimples", all_versions=True)).versions
        ] == [1, 2]
        assert [v.pipeline.version for v in (await status(stub, "tfsimples")).versions] == [2]
        listing = [r async for r in stub.PipelineStatus(scheduler_pb2.PipelineStatusRequest(), timeout=5)]
        assert [r.pipelineName for r in listing] == ["tfsimples"]

        await stub.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name="tfsimples"), timeout=5)
        gone = await status(stub, "tfsimples")
        assert latest_status(gone) == "PipelineTerminated"
        assert gone.operation == scheduler_pb2.PipelineStatusResponse.PipelineDelete
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stub.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name="tfsimples"), timeout=5)
        assert again.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_pipelines_are_invalid_argument_with_a_message_and_change_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, stub, _chainer):
        await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=chain()), timeout=5)
        before = await status(stub, "tfsimples", all_versions=True)
        for bad, says in (
            (chain(second_input="tfsimple9"), "names step tfsimple9"),
            (chain(second_input="tfsimple1.outputs.NOPE"), "matches none of the inputs"),
            (chain(second_input="tfsimple1.sideways"), "tfsimple1.sideways"),
            (
                scheduler_pb2.Pipeline(
                    name="tfsimples",
                    steps=[
                        scheduler_pb2.PipelineStep(name="a", inputs=["b"]),
                        scheduler_pb2.PipelineStep(name="b", inputs=["a"]),
                    ],
                ),
                "cycle",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=bad), timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (refused.value.details() or "")
        after = await status(stub, "tfsimples", all_versions=True)
        assert [v.SerializeToString() for v in after.versions] == [
            v.SerializeToString() for v in before.versions
        ]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await status(stub, "nope")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "pipeline nope not found" in (unknown.value.details() or "")


async def test_a_fake_engine_over_grpc_makes_the_pipeline_ready_and_its_leaving_undoes_it(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (app, stub, chainer):
        await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=chain()), timeout=5)
        watch = stub.SubscribePipelineStatus(scheduler_pb2.PipelineSubscriptionRequest(subscriberName="t"))
        seen: list[str] = []

        async def follow() -> None:
            async for response in watch:
                seen.append(latest_status(response))

        follower = asyncio.create_task(follow())
        await eventually(lambda: _seen(seen, "PipelineCreate"), "the stream starts with the current state")
        engine = chainer.SubscribePipelineUpdates(chainer_pb2.PipelineSubscriptionRequest(name="engine-0"))
        update = await asyncio.wait_for(read(engine), WAIT_S)
        assert (update.op, update.pipeline, update.version, update.stream) == (
            Update.Create,
            "tfsimples",
            1,
            "engine-0",
        )
        assert len(update.uid) == 20
        await eventually(lambda: _is(stub, "PipelineCreating"), "creating")
        await chainer.PipelineUpdateEvent(
            chainer_pb2.PipelineUpdateStatusMessage(update=update, success=True), timeout=5
        )
        await eventually(lambda: _is(stub, "PipelineReady"), "ready")
        assert (await status(stub, "tfsimples")).versions[0].state.reason == "created pipeline"

        await stub.UnloadPipeline(scheduler_pb2.UnloadPipelineRequest(name="tfsimples"), timeout=5)
        delete = await asyncio.wait_for(read(engine), WAIT_S)
        assert (delete.op, delete.version) == (Update.Delete, 1)
        assert latest_status(await status(stub, "tfsimples")) == "PipelineTerminating"
        await chainer.PipelineUpdateEvent(
            chainer_pb2.PipelineUpdateStatusMessage(update=delete, success=True), timeout=5
        )
        await eventually(lambda: _is(stub, "PipelineTerminated"), "terminated")

        await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=chain()), timeout=5)
        created = await asyncio.wait_for(read(engine), WAIT_S)
        assert (created.op, created.version) == (Update.Create, 2)
        engine.cancel()  # the engine goes away: nothing runs the pipeline any more
        await eventually(lambda: _is(stub, "PipelineCreate"), "back to create")
        assert not app.pipelines.engines.sessions
        await eventually(lambda: _seen(seen, "PipelineTerminated"), "the stream saw it")
        assert seen[0] == "PipelineCreate" and "PipelineReady" in seen
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


async def test_a_bad_engine_name_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, _stub, chainer):
        engine = chainer.SubscribePipelineUpdates(chainer_pb2.PipelineSubscriptionRequest(name="Bad Name"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await engine.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pipelines_survive_a_restart(tmp_path: Path) -> None:
    async with serving(tmp_path) as (_, stub, _chainer):
        await stub.LoadPipeline(scheduler_pb2.LoadPipelineRequest(pipeline=chain()), timeout=5)
        uid = (await status(stub, "tfsimples")).versions[0].pipeline.uid
    async with serving(tmp_path) as (_, stub, _chainer):
        restored = (await status(stub, "tfsimples")).versions[0]
        assert (restored.pipeline.uid, restored.pipeline.version) == (uid, 1)
        assert restored.state.status == State.PipelineCreate


async def read(call: grpc.aio.UnaryStreamCall[chainer_pb2.PipelineSubscriptionRequest, Update]) -> Update:
    message = await call.read()
    assert isinstance(message, Update), message
    return message


async def _is(stub: SchedulerAsyncStub, wanted: str) -> bool:
    return latest_status(await status(stub, "tfsimples")) == wanted


async def _seen(seen: list[str], wanted: str) -> bool:
    return wanted in seen
