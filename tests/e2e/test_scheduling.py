"""Seldon Core 2 scheduling scenarios (capabilities, pinning, replicas, memory, scaling) on real servers.

Servers are declared with `meshserve server load`; the local stack's controller starts their
MLServer + agent replicas, as the Seldon operator would in Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import joblib
import pytest
from sklearn.dummy import DummyClassifier

from apis.mlops.scheduler import scheduler_pb2
from samples import train
from stack.components import replica_names
from tests.e2e.conftest import IRIS_IN, Stack, eventually, iris_model, running_stack, stack_config
from tests.e2e.test_cli import cli
from tests.e2e.test_local_stack import alive
from tests.e2e.test_serving_path import load, unload
from tests.e2e.traffic import assert_served, traffic

SERVERS = """\
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {name: mlserver-134}
spec: {serverConfig: mlserver, replicas: 1, capabilities: [mlserver-1.3.4]}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {name: mlserver-extra}
spec: {serverConfig: mlserver, replicas: 1, extraCapabilities: [extra]}
"""


def server_yaml(name: str, **spec: object) -> str:
    body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in spec.items())
    return (
        f"apiVersion: mlops.seldon.io/v1alpha1\nkind: Server\nmetadata: {{name: {name}}}\nspec: {{{body}}}\n"
    )


async def declare(stack: Stack, manifest: Path, *names: str) -> None:
    """`meshserve server load -f` then `server status -w` for each server named."""
    home = str(stack.config.home)
    loaded = await cli(stack, "server", "load", "-f", str(manifest), "--home", home)
    assert loaded.returncode == 0, loaded.stderr
    for name in names:
        waited = await cli(stack, "server", "status", name, "-w", "--wait-timeout", "90")
        assert waited.returncode == 0, waited.stderr


@pytest.fixture(scope="module")
async def servers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("scheduling")
    async with running_stack(stack_config(home)) as stack:
        manifest = home / "servers.yaml"
        manifest.write_text(SERVERS)
        await declare(stack, manifest, "mlserver-134", "mlserver-extra")
        yield stack


@pytest.fixture(scope="module")
def settings_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact that brings its own model-settings.json, so any MLServer can load it."""
    folder = tmp_path_factory.mktemp("with-settings")
    shutil.copy(train.ARTIFACTS / "iris" / "model.joblib", folder)
    settings = {"implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


async def server_of(stack: Stack, name: str, state: str = "ModelAvailable") -> str:
    return (await stack.wait_state(name, state)).versions[-1].serverName


async def test_capabilities_replace_and_extend_the_server_config(
    servers: Stack, settings_artifact: Path
) -> None:
    # 15: a model needing the replaced capability lands there and serves.
    await load(
        servers, iris_model("needs-134", uri=f"file://{settings_artifact}", requirements=["mlserver-1.3.4"])
    )
    assert await server_of(servers, "needs-134") == "mlserver-134"
    async with servers.http.post(f"{servers.url}/v2/models/needs-134/infer", json=IRIS_IN) as response:
        body = await response.json()
    assert (body["model_name"], body["outputs"][0]["data"]) == ("needs-134_1", [2])
    # 16: extraCapabilities add to the defaults; the server still satisfies sklearn.
    await load(servers, iris_model("needs-extra", requirements=["sklearn", "extra"]))
    assert await server_of(servers, "needs-extra") == "mlserver-extra"
    # 13/15: an sklearn model is never placed on mlserver-134, whose capabilities were replaced.
    for name in ("plain-a", "plain-b", "plain-c"):
        await load(servers, iris_model(name))
        assert await server_of(servers, name) in {"mlserver", "mlserver-extra"}
    for name in ("needs-134", "needs-extra", "plain-a", "plain-b", "plain-c"):
        await unload(servers, name)


async def test_pinning_places_on_the_named_server_or_fails_there(
    servers: Stack, settings_artifact: Path
) -> None:
    # 17: pinned with no requirements.
    await load(
        servers,
        iris_model("pinned", uri=f"file://{settings_artifact}", requirements=[], server="mlserver-134"),
    )
    assert await server_of(servers, "pinned") == "mlserver-134"
    # Too big for the pinned server: ScheduleFailed, not moved to another server.
    big = iris_model("pinned-big", requirements=[], server="mlserver-134", memoryBytes=10**13)
    await load(servers, big)
    failed = await servers.wait_state("pinned-big", "ScheduleFailed")
    assert failed.versions[-1].serverName in ("", "mlserver-134")
    assert "bytes free" in failed.versions[-1].state.reason
    for name in ("pinned", "pinned-big"):
        await unload(servers, name)


async def test_pinning_to_an_unknown_server_is_rejected(servers: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await load(servers, iris_model("lost", server="no-such-server"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-server" in (caught.value.details() or "")
    assert await servers.model_status("lost") is None


async def test_replicas_beyond_the_servers_need_min_replicas(servers: Stack) -> None:
    # 18: two replicas on 1-replica servers fail; with minReplicas 1 the model runs on one.
    wide = iris_model("wide")
    wide.deploymentSpec.replicas = 2
    await load(servers, wide)
    await servers.wait_state("wide", "ScheduleFailed")
    await unload(servers, "wide")
    await servers.wait_gone("wide")
    partial = iris_model("partial")
    partial.deploymentSpec.replicas, partial.deploymentSpec.minReplicas = 2, 1
    await load(servers, partial)
    status = await servers.wait_state("partial", "ModelAvailable")
    assert status.versions[-1].state.availableReplicas == 1
    assert (await servers.infer("partial")).status == 200
    await unload(servers, "partial")


async def test_memory_beyond_every_replica_is_schedule_failed(servers: Stack) -> None:
    # 20: more than memory * (1 + overcommit) of any matching replica.
    await load(servers, iris_model("huge", memoryBytes=10**13))
    status = await servers.wait_state("huge", "ScheduleFailed")
    assert "bytes free" in status.versions[-1].state.reason
    await unload(servers, "huge")


BALLAST_BYTES = 1_500_000_000  # with MOVER_BYTES, more than one replica holds (2 GB + 10 % overcommit)
MOVER_BYTES = 1_000_000_000
ReplicaState = scheduler_pb2.ModelReplicaStatus.ModelReplicaState


async def serving(stack: Stack, name: str) -> tuple[str, set[int]]:
    """Where ``name``'s latest version serves: its server and the replicas Available there."""
    status = await stack.model_status(name)
    assert status is not None, f"model {name} is not known"
    version = status.versions[-1]
    available = {i for i, r in version.modelReplicaState.items() if ReplicaState.Name(r.state) == "Available"}
    return version.serverName, available


async def loaded_models(stack: Stack, server: str) -> dict[int, int]:
    """How many models each replica of ``server`` holds, as ServerStatus reports it."""
    request = scheduler_pb2.ServerStatusRequest(name=server)
    async for status in stack.scheduler.ServerStatus(request, timeout=5):
        return {r.replicaIdx: r.numLoadedModels for r in status.resources}
    return {}


async def server_status(stack: Stack, name: str) -> scheduler_pb2.ServerStatusResponse:
    request = scheduler_pb2.ServerStatusRequest(name=name)
    async for status in stack.scheduler.ServerStatus(request, timeout=5):
        return status
    raise AssertionError(f"server {name} is not known")


async def expected_replicas(stack: Stack, server: str) -> int:
    """The replica count the server is declared with (a ScalingRequest carried out changes it)."""
    return (await server_status(stack, server)).expectedReplicas


def running_replicas(stack: Stack, server: str, upto: int = 8) -> set[int]:
    """The indexes of ``server``'s replicas whose agent the supervisor runs."""
    return {i for i in range(upto) if stack.supervisor.running(replica_names(stack.config, server, i)[1])}


def replica_pids(stack: Stack, server: str, idx: int) -> list[int]:
    """The pids of a server replica's MLServer and agent (each must be running)."""
    return [stack.supervisor.pid(name) for name in replica_names(stack.config, server, idx)]


def replica_stopped(stack: Stack, server: str, idx: int, pids: list[int]) -> bool:
    """The supervisor no longer runs the replica's MLServer or agent, and their processes are gone."""
    names = replica_names(stack.config, server, idx)
    return not any(stack.supervisor.running(n) for n in names) and not any(alive(p) for p in pids)


async def test_server_scales_out_and_in_with_the_local_controller(servers: Stack, tmp_path: Path) -> None:
    """Scale out: the new replica takes a model. Scale in while that model is still on the retiring
    replica and cannot move yet: the replica keeps running (and serving it) while it holds the model,
    and stops once the model moved - under load, with no failed request."""
    extra = ["sklearn", "extra"]
    manifest = tmp_path / "two.yaml"
    # The ballast fills replica 0 (the only one yet), so the mover fits only on the new replica 1 ...
    await load(servers, iris_model("ballast", requirements=extra, memoryBytes=BALLAST_BYTES))
    await servers.wait_state("ballast", "ModelAvailable")
    assert await serving(servers, "ballast") == ("mlserver-extra", {0})
    manifest.write_text(server_yaml("mlserver-extra", replicas=2, extraCapabilities=["extra"]))
    await declare(servers, manifest, "mlserver-extra")
    await load(servers, iris_model("mover", requirements=extra, memoryBytes=MOVER_BYTES))
    await servers.wait_state("mover", "ModelAvailable")
    assert await serving(servers, "mover") == ("mlserver-extra", {1})
    assert await loaded_models(servers, "mlserver-extra") == {0: 1, 1: 1}
    pids = replica_pids(servers, "mlserver-extra", 1)

    async with traffic(servers, ["mover"], rate_per_stream=12) as calls:
        # ... and cannot move back to replica 0 on scale-in while the ballast is there.
        manifest.write_text(server_yaml("mlserver-extra", replicas=1, extraCapabilities=["extra"]))
        await declare(servers, manifest)
        for _ in range(6):  # 3 s: the retiring replica holds the model, so it runs on
            assert (await loaded_models(servers, "mlserver-extra")).get(1) == 1
            assert all(alive(p) for p in pids) and servers.supervisor.pid("agent-mlserver-extra-1") == pids[1]
            assert await serving(servers, "mover") == ("mlserver-extra", {1})
            await asyncio.sleep(0.5)
        await unload(servers, "ballast")  # room on replica 0: the mover moves there, then replica 1 stops

        async def moved() -> bool:
            return await serving(servers, "mover") == ("mlserver-extra", {0})

        await eventually(moved, timeout=60, what="the mover to serve from replica 0 only")
        await eventually(
            lambda: _async(replica_stopped(servers, "mlserver-extra", 1, pids)),
            timeout=60,
            what="replica 1 of mlserver-extra to stop",
        )
        await asyncio.sleep(1)  # and a while after
    assert_served(calls, "scale in with a model on the retiring replica")
    assert (await loaded_models(servers, "mlserver-extra")).get(1, 0) == 0  # listed until its grace ends
    await unload(servers, "mover")
    await servers.wait_gone("mover")


async def test_unloading_a_server_moves_its_models_and_stops_it(servers: Stack, tmp_path: Path) -> None:
    """A model on the server being unloaded moves to another server that can run it (make before
    break: it answers throughout), then the unloaded server's processes stop.

    The model is pinned to mlserver-temp by a capability only that server has when it loads; a
    ``modelSpec.server`` pin could not move at all (scheduler/placement.py ``sharing``)."""
    manifest = tmp_path / "temp.yaml"
    manifest.write_text(server_yaml("mlserver-temp", replicas=1, extraCapabilities=["temp"]))
    await declare(servers, manifest, "mlserver-temp")
    await load(servers, iris_model("mover-temp", requirements=["sklearn", "temp"]))
    await servers.wait_state("mover-temp", "ModelAvailable")
    assert await serving(servers, "mover-temp") == ("mlserver-temp", {0})
    assert await loaded_models(servers, "mlserver-temp") == {0: 1}
    pids = replica_pids(servers, "mlserver-temp", 0)
    # A second server that can run it comes up; nothing moves until mlserver-temp is unloaded.
    manifest.write_text(server_yaml("mlserver-dest", replicas=1, extraCapabilities=["temp"]))
    await declare(servers, manifest, "mlserver-dest")
    assert await serving(servers, "mover-temp") == ("mlserver-temp", {0})

    async with traffic(servers, ["mover-temp"], rate_per_stream=12) as calls:
        assert (await cli(servers, "server", "unload", "mlserver-temp")).returncode == 0

        async def gone() -> bool:
            listed = json.loads((await cli(servers, "server", "list", "-o", "json")).stdout)
            return "mlserver-temp" not in {s["serverName"] for s in listed}

        await eventually(gone, timeout=60, what="mlserver-temp to be removed")
        await eventually(
            lambda: _async(replica_stopped(servers, "mlserver-temp", 0, pids)),
            timeout=30,
            what="mlserver-temp's MLServer and agent to stop",
        )
        assert await serving(servers, "mover-temp") == ("mlserver-dest", {0})
        await asyncio.sleep(1)  # and a while after
    assert_served(calls, "server unload with a model on it")
    assert await loaded_models(servers, "mlserver-dest") == {0: 1}
    await unload(servers, "mover-temp")
    await servers.wait_gone("mover-temp")
    dest = replica_pids(servers, "mlserver-dest", 0)
    assert (await cli(servers, "server", "unload", "mlserver-dest")).returncode == 0
    await eventually(
        lambda: _async(replica_stopped(servers, "mlserver-dest", 0, dest)),
        timeout=30,
        what="mlserver-dest to stop (before the stack does)",
    )

    async def dest_forgotten() -> bool:
        listed = json.loads((await cli(servers, "server", "list", "-o", "json")).stdout)
        return all(s["serverName"] != "mlserver-dest" for s in listed)

    # Its replica leaves the scheduler once the agent's grace period ends: wait, so the next test's
    # snapshot of the server list does not see that happen.
    await eventually(dest_forgotten, timeout=30, what="mlserver-dest to leave the server list")


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (server_yaml("bad-min", replicas=1, minReplicas=2), "below minReplicas"),
        (server_yaml("bad-max", replicas=3, maxReplicas=2), "above maxReplicas"),
        (server_yaml("bad-cap", capabilities=["not ok!"]), "capability"),
        (server_yaml("bad-config", serverConfig="triton"), "serverConfig"),
        (server_yaml("Bad-Name"), "invalid"),
    ],
    ids=["replicas-below-min", "max-below-replicas", "capability-syntax", "unknown-config", "bad-name"],
)
async def test_bad_server_resources_change_nothing(
    servers: Stack, tmp_path: Path, body: str, message: str
) -> None:
    async def declared() -> dict[str, int]:
        listed = json.loads((await cli(servers, "server", "list", "-o", "json")).stdout)
        return {s["serverName"]: s.get("expectedReplicas", 0) for s in listed}

    before = await declared()
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(body)
    result = await cli(servers, "server", "load", "-f", str(manifest), "--home", str(servers.config.home))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert await declared() == before


async def test_artifact_version_update_serves_the_new_version(servers: Stack, tmp_path: Path) -> None:
    # 24: one artifact with numbered version folders; artifactVersion picks one.
    for version, model in (
        ("1", joblib.load(train.ARTIFACTS / "iris" / "model.joblib")),
        ("2", _constant(0)),
    ):
        folder = tmp_path / "math" / version
        folder.mkdir(parents=True)
        joblib.dump(model, folder / "model.joblib")
        settings = {
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib"},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
    math = iris_model("math", uri=f"file://{tmp_path / 'math'}", artifactVersion=1)
    await load(servers, math)
    await servers.wait_state("math", "ModelAvailable")
    async with servers.http.post(f"{servers.url}/v2/models/math/infer", json=IRIS_IN) as response:
        assert (await response.json())["outputs"][0]["data"] == [2]
    math.modelSpec.artifactVersion = 2
    await load(servers, math)

    async def on_version_two() -> bool:
        async with servers.http.post(f"{servers.url}/v2/models/math/infer", json=IRIS_IN) as response:
            body = await response.json()
        return bool(body["model_name"] == "math_2" and body["outputs"][0]["data"] == [0])

    await eventually(on_version_two, what="math_2 to serve")
    await unload(servers, "math")
    await servers.wait_gone("math")
    assert (await servers.infer("math")).status == 404


def _constant(label: int) -> DummyClassifier:
    model = DummyClassifier(strategy="constant", constant=label)
    return model.fit([[0, 0, 0, 0], [1, 1, 1, 1]], [label, label + 1])


def test_server_resource_documents_are_scheduler_messages() -> None:
    """The CLI's Server parsing gives the scheduler exactly the Seldon ServerNotify fields."""
    import yaml

    from cli.resources import server_manifest

    manifest = server_manifest(yaml.safe_load(server_yaml("s", replicas=2, minReplicas=1, maxReplicas=3)))
    assert manifest.notify == scheduler_pb2.ServerNotify(
        name="s", expectedReplicas=2, minReplicas=1, maxReplicas=3, shared=True
    )
    assert manifest.capabilities == ("mlserver", "sklearn", "xgboost", "lightgbm", "python")
