"""`meshserve up --detach` / `down` through the real console script, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc

from apis.v2_dataplane import v2_dataplane_pb2_grpc
from stack.config import port_defaults
from stack.ports import free_ports
from tests.e2e.conftest import IRIS_IN
from tests.e2e.test_serving_path import GRPC_IRIS

MESHSERVE = str(Path(sys.executable).parent / "meshserve")


def meshserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHSERVE, *args], capture_output=True, text=True, timeout=300, check=False)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_under(home: Path) -> list[str]:
    """Command lines of live processes that mention the stack's home (our children do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(home) in cmdline:
            found.append(cmdline)
    return found


async def test_up_serves_iris_and_down_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Every port `up` has a flag for, on a free port: tests run beside other stacks.
    ports = dict(zip(port_defaults(), free_ports(len(port_defaults())), strict=True))
    http, sched = ports["http_port"], ports["scheduler_port"]
    flags = [f"--{name.replace('_', '-')}={port}" for name, port in ports.items()]
    up = meshserve("up", "--detach", "--home", str(home), *flags)
    try:
        assert up.returncode == 0, up.stderr
        assert "curl" in up.stderr  # the ready banner
        state = json.loads((home / "stack.json").read_text())
        pids = [state["supervisor"], *state["components"].values()]

        # The demo model answers over REST and gRPC through Envoy.
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{http}/v2/models/iris/infer"
            async with session.post(url, json=IRIS_IN, headers={"seldon-model": "iris"}) as r:
                body = await r.json()
                assert r.status == 200
        assert body["model_name"] == "iris_1"
        assert body["outputs"][0]["data"] == [2]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{http}") as channel:
            stub = v2_dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelInfer(GRPC_IRIS, metadata=[("seldon-model", "iris")], timeout=10)
        assert reply.model_name == "iris_1"

        status = meshserve("status", "--home", str(home))
        assert status.returncode == 0, status.stdout + status.stderr
        listed = meshserve("--scheduler-host", f"127.0.0.1:{sched}", "model", "list", "-o", "json")
        assert [m["modelName"] for m in json.loads(listed.stdout)] == ["iris"]
    finally:
        down = meshserve("down", "--home", str(home))
    assert down.returncode == 0, down.stderr
    await asyncio.sleep(0.5)
    assert not [pid for pid in pids if alive(pid)]
    assert processes_under(home) == []
    assert meshserve("status", "--home", str(home)).returncode != 0
