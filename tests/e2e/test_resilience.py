"""Zero failed requests while the control plane restarts or a model rolls to a new version."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import json_format

from apis.mlops.scheduler import scheduler_pb2
from stack.probes import grpc_healthy
from tests.e2e.conftest import IRIS_IN, Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import Traffic, assert_served, envoy_resynced, traffic, xds_connections

RATE_PER_SECOND = 25  # the issue asks for at least 20 req/s for the whole change


@dataclass
class Load:
    """Steady REST traffic to some models; records every outcome and the route tokens seen."""

    stack: Stack
    models: list[str]
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    routes: list[tuple[float, str]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1 / RATE_PER_SECOND
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                started = time.monotonic()
                for model in self.models:
                    await self._one(session, model)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    async def _one(self, session: aiohttp.ClientSession, model: str) -> None:
        url = f"{self.stack.url}/v2/models/{model}/infer"
        try:
            async with session.post(url, json=IRIS_IN, headers={"seldon-model": model}) as response:
                body = await response.read()
                if response.status != 200:
                    self.failures.append(f"{model}: HTTP {response.status} {body[:200]!r}")
                    return
                self.ok += 1
                self.routes.append((time.monotonic(), response.headers.get("x-seldon-route", "")))
        except (aiohttp.ClientError, TimeoutError) as error:
            self.failures.append(f"{model}: {error!r}")


@contextlib.asynccontextmanager
async def steady_load(stack: Stack, models: list[str]) -> AsyncIterator[Load]:
    load_ = Load(stack, models)
    stop = asyncio.Event()
    task = asyncio.create_task(load_.run(stop))
    try:
        yield load_
    finally:
        stop.set()
        await task


@pytest.fixture(scope="module")
async def own_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # A stack of its own: these tests kill the scheduler.
    async with running_stack(stack_config(tmp_path_factory.mktemp("resilience"))) as stack:
        yield stack


Listing = tuple[list[dict[str, object]], list[dict[str, object]]]


async def listing(stack: Stack) -> Listing:
    """`model list` and `server list` contents, without timestamps."""
    models = [
        json_format.MessageToDict(m)
        async for m in stack.scheduler.ModelStatus(scheduler_pb2.ModelStatusRequest())
    ]
    for model in models:
        model.pop("timestamp", None)
        for version in model.get("versions", []):
            version["state"].pop("lastChangeTimestamp", None)
            for replica in version.get("modelReplicaState", {}).values():
                replica.pop("lastChangeTimestamp", None)
    servers = [
        json_format.MessageToDict(s)
        async for s in stack.scheduler.ServerStatus(scheduler_pb2.ServerStatusRequest())
    ]
    return models, servers


STEADY = ["steady-a", "steady-b"]
ModelState = scheduler_pb2.ModelStatus.ModelState
ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState


async def steady_models(stack: Stack) -> None:
    for name in STEADY:
        if await stack.model_status(name) is None:
            await load(stack, iris_model(name))
    for name in STEADY:
        await stack.wait_state(name, "ModelAvailable")


async def kill_scheduler(stack: Stack, connections: int) -> float:
    """SIGKILL the scheduler; return once a new one answers and Envoy has a new xDS stream to it (a
    connection opened since it had ``connections``, ``control_plane.connected_state`` 1), with the
    seconds that took."""
    old = stack.supervisor.pid("scheduler")
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()

    async def scheduler_back() -> bool:
        return stack.supervisor.pid("scheduler") != old and await grpc_healthy(stack.scheduler_address)

    await eventually(scheduler_back, what="the scheduler to restart")
    await eventually(
        lambda: envoy_resynced(stack, connections), what="Envoy's xDS stream to the new scheduler"
    )
    return time.monotonic() - killed


async def same_listing(stack: Stack, before: Listing, what: str) -> None:
    async def same() -> bool:
        return await listing(stack) == before

    await eventually(same, what=what)


def assert_clean(calls: Traffic, what: str) -> None:
    assert_served(calls, what)
    assert calls.rate() >= 20, calls.figure(what)


async def test_scheduler_sigkill_under_load_loses_nothing(own_stack: Stack) -> None:
    """Envoy serves on from its last configuration while the scheduler is down, and the restarted
    scheduler's first snapshot routes every model as before: no failed request, no gap."""
    stack = own_stack
    await steady_models(stack)
    before = await listing(stack)
    async with traffic(stack, STEADY) as calls:
        await asyncio.sleep(1)
        took = await kill_scheduler(stack, await xds_connections(stack))
        await same_listing(stack, before, "the agent to re-register its models")
        await asyncio.sleep(2)  # and a while after Envoy's new stream is up
    assert_clean(calls, f"scheduler SIGKILL (Envoy re-synced after {took:.1f} s)")
    assert await listing(stack) == before


async def test_scheduler_sigkill_right_after_load_model_returns(own_stack: Stack) -> None:
    """A LoadModel that returned is kept: the model becomes Available after the restart (version 1,
    nothing lost), and the models already serving fail no request."""
    stack = own_stack
    await steady_models(stack)
    before = await listing(stack)
    async with traffic(stack, STEADY) as calls:
        connections = await xds_connections(stack)
        await load(stack, iris_model("fresh"))
        took = await kill_scheduler(stack, connections)
        status = await stack.wait_state("fresh", "ModelAvailable")
        assert [v.version for v in status.versions] == [1]
        assert (await stack.infer("fresh")).status == 200
        models, _ = await listing(stack)
        assert [m for m in models if m["modelName"] != "fresh"] == before[0]  # the others unchanged
        await asyncio.sleep(2)
    assert_clean(calls, f"scheduler SIGKILL right after LoadModel (Envoy re-synced after {took:.1f} s)")
    await unload(stack, "fresh")
    await stack.wait_gone("fresh")
    await same_listing(stack, before, "the listing to be what it was")


async def test_scheduler_sigkill_in_the_middle_of_a_roll_out(own_stack: Stack) -> None:
    """Killed while version 2 loads: after the restart the roll-out completes (version 2 Available,
    version 1 unloaded from MLServer) and no request fails, on the rolling model or the others."""
    stack = own_stack
    await steady_models(stack)
    await load(stack, iris_model("roll"))
    await stack.wait_state("roll", "ModelAvailable")
    async with traffic(stack, ["roll", *STEADY]) as calls:
        await asyncio.sleep(1)
        connections = await xds_connections(stack)
        updated = iris_model("roll")
        updated.modelSpec.parameters.add(name="note", value="v2")  # a changed spec: version 2
        await load(stack, updated)
        phase = await roll_out_phase(stack, "roll")
        took = await kill_scheduler(stack, connections)
        status = await stack.wait_state("roll", "ModelAvailable")
        assert status.versions[-1].version == 2

        async def old_version_gone() -> bool:
            versions = await all_versions(stack, "roll")
            return ModelState.Name(versions[0].state.state) == "ModelTerminated"

        await eventually(old_version_gone, what="version 1 to be unloaded")
        assert await mlserver_ready(stack) >= {"roll_2"}
        assert "roll_1" not in await mlserver_ready(stack)
        await asyncio.sleep(2)
    assert_clean(calls, f"scheduler SIGKILL mid roll-out, v2 {phase} (Envoy re-synced after {took:.1f} s)")
    await unload(stack, "roll")
    await stack.wait_gone("roll")


async def all_versions(stack: Stack, name: str) -> list[scheduler_pb2.ModelVersionStatus]:
    request = scheduler_pb2.ModelStatusRequest(
        model=scheduler_pb2.ModelReference(name=name), allVersions=True
    )
    async for reply in stack.scheduler.ModelStatus(request, timeout=5):
        return list(reply.versions)
    return []


async def roll_out_phase(stack: Stack, name: str) -> str:
    """Wait until version 2 of ``name`` is on its way in while version 1 still serves; return the
    state of version 2's replica then (LoadRequested, Loading, Loaded, ...)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        versions = await all_versions(stack, name)
        if len(versions) == 2 and versions[1].modelReplicaState:
            assert ModelState.Name(versions[0].state.state) != "ModelTerminated", versions
            return "/".join(ReplicaState.Name(r.state) for r in versions[1].modelReplicaState.values())
        await asyncio.sleep(0.01)
    raise AssertionError(f"version 2 of {name} never started loading")


async def mlserver_ready(stack: Stack) -> set[str]:
    """The model versions the stack's MLServer holds READY (its repository index)."""
    url = f"http://127.0.0.1:{stack.config.mlserver_http_port}/v2/repository/index"
    async with stack.http.post(url, json={}) as response:
        index = await response.json()
    return {m["name"] for m in index if m.get("state") == "READY"}


async def test_rolling_update_under_load_has_no_failed_request(own_stack: Stack, tmp_path: Path) -> None:
    stack = own_stack
    await load(stack, iris_model("rolling"))
    await stack.wait_state("rolling", "ModelAvailable")

    async with steady_load(stack, ["rolling"]) as traffic:
        await asyncio.sleep(1)
        # A changed model spec (a new parameter) makes version 2.
        updated = iris_model("rolling")
        updated.modelSpec.parameters.add(name="note", value="v2")
        await load(stack, updated)
        status = await stack.wait_state("rolling", "ModelAvailable")
        assert status.versions[-1].version == 2

        async def old_version_gone() -> bool:
            request = scheduler_pb2.ModelStatusRequest(
                model=scheduler_pb2.ModelReference(name="rolling"), allVersions=True
            )
            async for reply in stack.scheduler.ModelStatus(request):
                first = reply.versions[0]
                return scheduler_pb2.ModelStatus.ModelState.Name(first.state.state) == "ModelTerminated"
            return False

        await eventually(old_version_gone, what="version 1 to be unloaded")
        finished = time.monotonic()
        await asyncio.sleep(1)

    assert traffic.failures == []
    seen = Counter(route for _, route in traffic.routes)
    assert seen[":rolling_1:"] > 0 and seen[":rolling_2:"] > 0
    assert {route for stamp, route in traffic.routes if stamp > finished} == {":rolling_2:"}
    assert traffic.ok >= RATE_PER_SECOND * 2
