"""The replica spec `meshserve server load` leaves for the local controller (stack/server_spec.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from apis.manifests.pod_spec import ReplicaResources
from apis.manifests.server import ServerManifest
from apis.mlops.scheduler import scheduler_pb2
from stack.commands import config_from
from stack.config import StackConfig
from stack.server_spec import ReplicaSpec, read_replica_spec, server_spec_file, spec_text
from tests.stack.test_config import up_args


def manifest(resources: ReplicaResources) -> ServerManifest:
    return ServerManifest(scheduler_pb2.ServerNotify(name="small"), ("sklearn", "small"), resources)


def write(config: StackConfig, text: str) -> None:
    path = server_spec_file(config.home, "small")
    path.parent.mkdir(parents=True)
    path.write_text(text)


def test_declared_memory_and_overcommit_reach_the_replicas(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path)
    write(config, spec_text(manifest(ReplicaResources(memory_bytes=10 * 2**20, overcommit_percent=0))))
    assert read_replica_spec(config, "small") == ReplicaSpec("sklearn,small", 10 * 2**20, 0)


def test_what_a_server_leaves_out_comes_from_the_stack(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path, server_memory=5_000, overcommit_percent=7)
    assert read_replica_spec(config, "small") == ReplicaSpec(config.capabilities, 5_000, 7)
    write(config, spec_text(manifest(ReplicaResources())))
    assert read_replica_spec(config, "small") == ReplicaSpec("sklearn,small", 5_000, 7)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        '{"capabilities": ["a"], "memoryBytes": -1}',
        '{"capabilities": ["a"], "overcommitPercent": 5000}',
        "{}",
    ],
)
def test_an_edited_spec_that_an_agent_could_not_take_is_refused(tmp_path: Path, text: str) -> None:
    config = StackConfig(home=tmp_path)
    write(config, text)
    with pytest.raises(ValueError, match="server spec"):
        read_replica_spec(config, "small")


def test_up_takes_the_default_servers_memory_as_a_quantity(tmp_path: Path) -> None:
    config = config_from(
        up_args(["--home", str(tmp_path), "--server-memory=2Gi", "--overcommit-percent=0"], {})
    )
    assert (config.server_memory, config.overcommit_percent) == (2 * 2**30, 0)


@pytest.mark.parametrize("text", ["{not json", '{"capabilities": ["sklearn"], "maxReplicas": "many"}'])
async def test_a_broken_spec_file_does_not_end_the_controllers_follower(tmp_path: Path, text: str) -> None:
    """A scaling request for a server whose spec file was edited into garbage is logged and ignored;
    it must not raise out of the controller's stream follower (which would stop every later one)."""
    from types import SimpleNamespace

    from stack.controller import ServerController

    config = StackConfig(home=tmp_path)
    path = server_spec_file(tmp_path, "auto")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    controller = ServerController(SimpleNamespace(config=config))
    request = scheduler_pb2.ServerStatusResponse(serverName="auto", expectedReplicas=3)
    await controller._scale(None, request)  # type: ignore[arg-type]  # no RPC: refused before it
