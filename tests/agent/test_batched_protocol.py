"""The agent protocol's batched RPCs against the real scheduler, and the fallback to Seldon's RPCs.

A simulated agent (no MLServer) on the in-process ``SchedulerApp``: it subscribes with
``SubscribeBatched`` and reports on ``AgentEventsAcked``; a scheduler without them (the test's
``FakeScheduler``, like Seldon's) gets ``Subscribe`` and one ``AgentEvent`` per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
import structlog

from agent import state as replica
from agent.client import AgentClient
from agent.config import AgentConfig
from agent.simulate import SimulatedOperator
from apis.mlops.agent import agent_pb2, agent_pb2_grpc
from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from scheduler.app import SchedulerApp, SchedulerConfig
from stack.ports import free_ports
from tests.agent.agent_protos import load_op, model_version
from tests.scheduler.fakes import model, subscribe
from tests.scheduler.test_store import Flaky, flaky  # noqa: F401 - fixture

if TYPE_CHECKING:
    from tests.agent.conftest import FakeScheduler

ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState
MODELS = 12


def sim_config(tmp_path: Path, port: int) -> AgentConfig:
    return AgentConfig(
        models_dir=tmp_path,
        server_name="sim",
        scheduler_port=port,
        memory_bytes=10**9,
        unload_grace_seconds=0,
    )


@contextlib.asynccontextmanager
async def sim_agent(config: AgentConfig) -> AsyncIterator[AgentClient]:
    log = structlog.get_logger()
    state = replica.ReplicaState(memory_bytes=config.memory_bytes, overcommit_percentage=0)
    async with grpc.aio.insecure_channel(config.scheduler_address) as channel:
        client = AgentClient(
            config=config,
            channel=channel,
            operator=SimulatedOperator(state=state, logger=log),
            state=state,
            logger=log,
        )
        task = asyncio.create_task(client.run())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[SchedulerApp]:
    scheduler_port, agent_port, xds_port, envoy_port = free_ports(4)
    config = SchedulerConfig(
        scheduler_port=scheduler_port,
        agent_port=agent_port,
        xds_port=xds_port,
        envoy_http_port=envoy_port,
        state_dir=tmp_path / "state",
        log_level="warning",
    )
    scheduler = SchedulerApp(config)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop(grace=0)


async def replica_states(stub: scheduler_pb2_grpc.SchedulerAsyncStub) -> dict[str, list[str]]:
    states: dict[str, list[str]] = {}
    async for status in stub.ModelStatus(scheduler_pb2.ModelStatusRequest(subscriberName="test")):
        for version in status.versions:
            states[status.modelName] = [
                ReplicaState.Name(r.state) for r in version.modelReplicaState.values()
            ]
    return states


async def test_operations_and_events_are_batched_with_the_real_scheduler(
    app: SchedulerApp, tmp_path: Path
) -> None:
    config = sim_config(tmp_path, app.config.agent_port)
    async with (
        sim_agent(config) as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.config.scheduler_port}") as channel,
    ):
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for _ in range(200):
            if app.core.servers.get("sim") and app.core.servers["sim"].replicas:
                break
            await asyncio.sleep(0.02)
        # Concurrent loads: several LOADs per stream message, several events per stream message.
        await asyncio.gather(
            *(
                stub.LoadModel(
                    scheduler_pb2.LoadModelRequest(
                        model=scheduler_pb2.Model(
                            meta=scheduler_pb2.MetaData(name=f"m{i}"),
                            modelSpec=scheduler_pb2.ModelSpec(uri="gs://m", memoryBytes=1000),
                            deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=1),
                        )
                    )
                )
                for i in range(MODELS)
            )
        )
        # No Envoy is connected, so Loaded (the agent's event applied) is as far as they get.
        for _ in range(200):
            states = await replica_states(stub)
            if len(states) == MODELS and all(s == ["Loaded"] for s in states.values()):
                break
            await asyncio.sleep(0.02)
        assert states == {f"m{i}": ["Loaded"] for i in range(MODELS)}
        assert client._batched  # the extensions were used, not the fallback
        assert client._events is not None


async def test_operations_queued_during_a_commit_leave_together_after_it(
    flaky: Flaky,  # noqa: F811 - the fixture
    app: SchedulerApp,
) -> None:
    flaky.commit_delay = 0.1  # a slow disk: a burst of loads arrives while a commit is in flight
    messages: list[tuple[float, list[str]]] = []
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{app.config.agent_port}") as agent_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{app.config.scheduler_port}") as channel,
    ):
        operations = agent_pb2_grpc.AgentServiceStub(agent_channel).SubscribeBatched(subscribe())
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        for _ in range(200):
            if app.core.servers.get("mlserver") and app.core.servers["mlserver"].replicas:
                break
            await asyncio.sleep(0.02)
        loads = asyncio.gather(
            *(
                stub.LoadModel(scheduler_pb2.LoadModelRequest(model=model(f"m{i}", memory=1000)))
                for i in range(MODELS)
            )
        )
        async for message in operations:
            messages.append(
                (time.monotonic(), [op.modelVersion.model.meta.name for op in message.operations])
            )
            if sum(len(names) for _, names in messages) == MODELS:
                break
        await loads
        operations.cancel()
    delivered = [name for _, names in messages for name in names]
    assert sorted(delivered) == sorted(f"m{i}" for i in range(MODELS))
    assert len(messages) <= MODELS // 3  # not one message per load
    later = [sent for sent, _ in messages[1:]]
    assert all(any(sent > done for done in flaky.committed_at) for sent in later)  # after a commit


async def test_a_scheduler_without_the_extensions_gets_seldons_rpcs(
    fake_scheduler: tuple[FakeScheduler, int], tmp_path: Path
) -> None:
    scheduler, port = fake_scheduler
    async with sim_agent(sim_config(tmp_path, port)) as client:
        await scheduler.next_subscription()
        scheduler.push(load_op(model_version("a", 1, "gs://m")))
        scheduler.push(load_op(model_version("b", 1, "gs://m")))
        events = [await scheduler.next_event(), await scheduler.next_event()]
        assert [(e.modelName, e.event) for e in events] == [
            ("a", agent_pb2.ModelEventMessage.LOADED),
            ("b", agent_pb2.ModelEventMessage.LOADED),
        ]
        assert not client._batched
        assert client._events is None  # AgentEventsAcked answered UNIMPLEMENTED: AgentEvent calls


async def test_an_event_the_scheduler_did_not_take_is_sent_again_until_it_does(
    fake_scheduler: tuple[FakeScheduler, int], tmp_path: Path
) -> None:
    scheduler, port = fake_scheduler
    scheduler.refuse_events = 2
    async with sim_agent(sim_config(tmp_path, port)):
        await scheduler.next_subscription()
        scheduler.push(load_op(model_version("a", 1, "gs://m")))
        event = await asyncio.wait_for(scheduler.next_event(), 10)
        assert (event.modelName, event.event) == ("a", agent_pb2.ModelEventMessage.LOADED)
        assert scheduler.refuse_events == 0  # refused twice, delivered the third time


async def test_an_event_batch_not_acknowledged_on_the_stream_is_sent_again_until_it_is(
    fake_scheduler: tuple[FakeScheduler, int], tmp_path: Path
) -> None:
    scheduler, port = fake_scheduler
    scheduler.acked_events = True
    # Taken but never answered (a dying connection), then refused: delivered the third time.
    scheduler.ack_failures = ["end", "abort"]
    async with sim_agent(sim_config(tmp_path, port)) as client:
        await scheduler.next_subscription()
        scheduler.push(load_op(model_version("a", 1, "gs://m")))
        event = await asyncio.wait_for(scheduler.next_event(), 10)
        assert (event.modelName, event.event) == ("a", agent_pb2.ModelEventMessage.LOADED)
        assert scheduler.ack_failures == []
        assert scheduler.acked_streams == 3  # each failure dropped the stream; a new one was opened
        assert client._events is not None
        scheduler.push(load_op(model_version("b", 1, "gs://m")))
        event = await asyncio.wait_for(scheduler.next_event(), 10)
        assert event.modelName == "b"
        assert scheduler.acked_streams == 3  # the working stream is kept


async def test_an_event_stream_that_ended_while_idle_is_replaced_before_the_next_batch(
    fake_scheduler: tuple[FakeScheduler, int], tmp_path: Path
) -> None:
    scheduler, port = fake_scheduler
    scheduler.acked_events = True
    scheduler.ack_failures = ["answer-then-end"]
    async with sim_agent(sim_config(tmp_path, port)):
        await scheduler.next_subscription()
        scheduler.push(load_op(model_version("a", 1, "gs://m")))
        assert (await asyncio.wait_for(scheduler.next_event(), 10)).modelName == "a"
        for _ in range(100):  # the agent sees the stream end
            await asyncio.sleep(0.02)
        scheduler.push(load_op(model_version("b", 1, "gs://m")))
        assert (await asyncio.wait_for(scheduler.next_event(), 10)).modelName == "b"
        assert scheduler.acked_streams == 2
