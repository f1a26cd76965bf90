"""Agents are who they say they are: registrations are validated, and a live replica is not stolen."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from apis.mlops.agent import agent_pb2, agent_pb2_grpc
from apis.names import AGENT_ID_HEADER
from apis.validation import InvalidResource, validate_host
from scheduler.agent_api import AgentService
from scheduler.errors import ReplicaTaken, StatusMapping
from scheduler.state import ReplicaState
from tests.scheduler.fakes import Harness, model, pending_ops, subscribe, wait_until

Request = agent_pb2.AgentSubscribeRequest


def _set(change: Callable[[Request], None]) -> Request:
    request = subscribe()
    change(request)
    return request


def _port(value: int) -> Callable[[Request], None]:
    return lambda r: setattr(r.replicaConfig, "inferenceHttpPort", value)


def _grpc_port(value: int) -> Callable[[Request], None]:
    return lambda r: setattr(r.replicaConfig, "inferenceGrpcPort", value)


def _host(value: str) -> Callable[[Request], None]:
    return lambda r: setattr(r.replicaConfig, "inferenceSvc", value)


BAD_REGISTRATIONS = {
    "http port 70000": (_port(70000), "inferenceHttpPort 70000 is out of range"),
    "http port 0": (_port(0), "inferenceHttpPort 0 is out of range"),
    "negative grpc port": (_grpc_port(-1), "inferenceGrpcPort -1 is out of range"),
    "host with scheme": (_host("http://10.0.0.1"), "hostname or an IP address only"),
    "host with port": (_host("10.0.0.1:8080"), "hostname or an IP address only"),
    "host with path": (_host("mlserver/v2"), "hostname or an IP address only"),
    "host with space": (_host("ml server"), "hostname or an IP address only"),
    "host with newline": (_host("mlserver\n"), "hostname or an IP address only"),
    "empty host": (_host(""), "inferenceSvc is empty"),
    "bad IPv4": (_host("999.1.1.1"), "hostname or an IP address only"),
    "replica index 1000": (lambda r: setattr(r, "replicaIdx", 1000), "replicaIdx is out of range"),
    "huge memory": (lambda r: setattr(r.replicaConfig, "memoryBytes", 2**60), "memoryBytes"),
    "huge overcommit": (lambda r: setattr(r.replicaConfig, "overCommitPercentage", 10**6), "overCommit"),
    "free memory above capacity": (lambda r: setattr(r, "availableMemoryBytes", 2**40), "capacity"),
    "bad capability": (lambda r: r.replicaConfig.capabilities.append("sk learn"), "capability"),
    "bad server name": (lambda r: setattr(r, "serverName", "Bad_Server"), "DNS-1123"),
}


@pytest.mark.parametrize(("change", "message"), BAD_REGISTRATIONS.values(), ids=BAD_REGISTRATIONS.keys())
async def test_bad_registration_is_refused_and_changes_nothing(
    harness: Harness, change: Callable[[Request], None], message: str
) -> None:
    with pytest.raises(InvalidResource, match=message):
        harness.scheduler.agent_connected(_set(change), "agent-a")
    assert harness.scheduler.servers == {}


@pytest.mark.parametrize(
    "host", ["10.0.0.1", "::1", "fe80::1", "mlserver", "mlserver-0.mlserver.default.svc", "a.b.c."]
)
def test_hostnames_and_addresses_are_valid_hosts(host: str) -> None:
    assert validate_host(host) == host


async def test_bad_registration_leaves_the_live_replica_alone(harness: Harness) -> None:
    link = harness.scheduler.agent_connected(subscribe(), "agent-a")
    await harness.settle()
    with pytest.raises(InvalidResource):
        harness.scheduler.agent_connected(_set(_port(70000)), "agent-a")
    replica = harness.scheduler.servers["mlserver"].replicas[0]
    assert replica.config.inferenceHttpPort == 9000
    assert link.outbox.empty()  # not closed


async def _available_iris(harness: Harness, identity: str) -> agent_pb2.AgentSubscribeRequest:
    request = subscribe()
    harness.links[("mlserver", 0)] = harness.scheduler.agent_connected(request, identity)
    await harness.settle()
    await harness.load(model("iris"))
    await harness.make_available("iris")
    assert harness.version("iris").replicas[0].state is ReplicaState.Available
    pending_ops(harness.links[("mlserver", 0)])
    return request


async def test_impersonating_agent_is_refused_while_the_real_stream_lives(harness: Harness) -> None:
    await _available_iris(harness, "real-agent")
    link = harness.links[("mlserver", 0)]
    impostor = _set(_host("10.6.6.6"))  # same server and replica, pointing Envoy elsewhere
    with pytest.raises(ReplicaTaken, match="held by another agent"):
        harness.scheduler.agent_connected(impostor, "impostor")
    await harness.settle()
    replica = harness.scheduler.servers["mlserver"].replicas[0]
    assert replica.config.inferenceSvc == "10.0.0.1"
    assert replica.connected
    assert link.outbox.empty()  # the real agent's stream was not closed
    assert harness.version("iris").replicas[0].state is ReplicaState.Available
    # An agent that sends no identity is another identity too.
    with pytest.raises(ReplicaTaken):
        harness.scheduler.agent_connected(impostor)


async def test_same_agent_resubscribing_replaces_its_own_stream(harness: Harness) -> None:
    request = await _available_iris(harness, "real-agent")
    old = harness.links[("mlserver", 0)]
    request.loadedModels.append(agent_pb2.ModelVersion(model=model("iris"), version=1))
    new = harness.scheduler.agent_connected(request, "real-agent")
    await harness.settle()
    assert new is not old
    assert old.outbox.get_nowait() is None  # the old stream is told to end
    assert harness.version("iris").replicas[0].state.serves


async def test_restarted_agent_takes_over_once_the_old_stream_ended(harness: Harness) -> None:
    request = await _available_iris(harness, "agent-before-restart")
    harness.scheduler.agent_disconnected(harness.links[("mlserver", 0)])
    request.loadedModels.append(agent_pb2.ModelVersion(model=model("iris"), version=1))
    link = harness.scheduler.agent_connected(request, "agent-after-restart")
    await harness.settle()
    assert harness.scheduler.servers["mlserver"].replicas[0].connected
    assert harness.version("iris").replicas[0].state.serves
    assert pending_ops(link) == []  # re-adopted, not reloaded


# -- over gRPC: the token travels as metadata, refusals have their status codes ----------------------


@pytest.fixture
async def agent_service(harness: Harness) -> AsyncIterator[agent_pb2_grpc.AgentServiceAsyncStub]:
    server = grpc.aio.server(interceptors=[StatusMapping()])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(harness.scheduler), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield agent_pb2_grpc.AgentServiceStub(channel)
    finally:
        await server.stop(grace=None)


async def _first_code(
    stub: agent_pb2_grpc.AgentServiceAsyncStub, request: Request, agent: str
) -> grpc.StatusCode:
    call = stub.Subscribe(request, metadata=((AGENT_ID_HEADER, agent),), timeout=5)
    try:
        async for _ in call:
            break
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        call.cancel()
    return grpc.StatusCode.OK


async def test_grpc_impersonation_is_already_exists_and_port_70000_invalid(
    harness: Harness, agent_service: agent_pb2_grpc.AgentServiceAsyncStub
) -> None:
    real = agent_service.Subscribe(subscribe(), metadata=((AGENT_ID_HEADER, "real-agent"),))
    try:
        await wait_until(lambda: "mlserver" in harness.scheduler.servers, timeout=5)
        assert await _first_code(agent_service, _set(_host("10.6.6.6")), "impostor") == (
            grpc.StatusCode.ALREADY_EXISTS
        )
        assert await _first_code(agent_service, _set(_port(70000)), "real-agent") == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        replica = harness.scheduler.servers["mlserver"].replicas[0]
        assert replica.connected and replica.config.inferenceSvc == "10.0.0.1"
    finally:
        real.cancel()
