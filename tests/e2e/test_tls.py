"""``meshserve up --tls``: mutual TLS on the scheduler's three ports, with the real processes.

One stack with ``tls=True`` (its own, beside the session's plain-text one): a client without a
certificate is refused on the Scheduler API, the AgentService and xDS; the CLI's certificate opens
the API; a model loads, Envoy ACKs its route over mTLS xDS, and it answers through Envoy. Envoy's
admin is a 0600 unix socket, not a port.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apis.mlops.scheduler import scheduler_pb2
from apis.tls import ClientTls
from stack.probes import port_open
from stack.tls import StackTls
from stack.tls import ensure as make_certificates
from tests.e2e.conftest import Stack, iris_model, running_stack, stack_config

pytestmark = pytest.mark.timeout(240)
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
async def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    config = stack_config(tmp_path_factory.mktemp("tls") / "home", tls=True)
    async with running_stack(config) as running:
        yield running


def _ports(stack: Stack) -> dict[str, int]:
    config = stack.config
    return {"api": config.scheduler_port, "agents": config.agent_port, "xds": config.xds_port}


async def _health(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode | int:
    """SERVING, or the status code of the failed call (the handshake's failure is UNAVAILABLE)."""
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return int(reply.status)


@pytest.mark.parametrize("port", ["api", "agents", "xds"])
async def test_a_client_without_a_certificate_is_refused(tls_stack: Stack, port: str) -> None:
    target = f"127.0.0.1:{_ports(tls_stack)[port]}"
    files = tls_stack.config.tls_files
    ca = files.ca.read_bytes()
    assert await _health(target, None) == grpc.StatusCode.UNAVAILABLE  # plain text
    # TLS that trusts the scheduler but presents no certificate: the handshake fails.
    assert await _health(target, grpc.ssl_channel_credentials(root_certificates=ca)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # A certificate from another CA (another stack's, say) is refused too.
    other = make_certificates(tls_stack.config.home.parent / "other-ca")
    stranger = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=other.key("cli").read_bytes(),
        certificate_chain=other.cert("cli").read_bytes(),
    )
    assert await _health(target, stranger) == grpc.StatusCode.UNAVAILABLE
    # The same call with a certificate of this stack gets through the handshake (xDS serves no
    # health service, so it answers UNIMPLEMENTED: the call reached the server).
    expected = grpc.StatusCode.UNIMPLEMENTED if port == "xds" else SERVING
    assert await _health(target, files.client("cli").credentials()) == expected


def _cli(stack: Stack, *args: str, tls: ClientTls | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSERVE_CLI_")}
    flags = [f"--scheduler-host=127.0.0.1:{stack.config.scheduler_port}"]
    if tls is not None:
        flags += [f"--tls-ca={tls.ca}", f"--tls-cert={tls.cert}", f"--tls-key={tls.key}"]
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *flags, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def test_the_cli_with_its_certificate_uses_the_api(tls_stack: Stack) -> None:
    server = tls_stack.config.server_name
    with_cert = _cli(tls_stack, "server", "list", "-o", "json", tls=tls_stack.config.tls_files.client("cli"))
    assert with_cert.returncode == 0, with_cert.stderr
    assert server in with_cert.stdout
    without = _cli(tls_stack, "server", "list", tls=None)
    assert without.returncode == 1
    assert "cannot reach scheduler" in without.stderr and "--tls-ca" in without.stderr


async def test_the_serving_path_works_over_mutual_tls(tls_stack: Stack) -> None:
    request = scheduler_pb2.LoadModelRequest(model=iris_model("tls-iris"))
    await tls_stack.scheduler.LoadModel(request, timeout=10)
    # Available means every connected Envoy ACKed the route, and Envoy's only xDS link is mTLS.
    await tls_stack.wait_state("tls-iris", "ModelAvailable", timeout=90)
    response = await tls_stack.infer("tls-iris", path_model="tls-iris")
    assert response.status == 200
    for cluster in ("meshserve_xds", "meshserve_lrs"):  # xDS, and load reports on a connection of their own
        stats = await _admin(tls_stack, f"/stats?filter=^cluster\\.{cluster}\\.ssl\\.handshake$")
        handshakes = int(stats.split(":")[1])
        assert handshakes >= 1, stats


async def test_envoy_admin_is_a_private_unix_socket(tls_stack: Stack) -> None:
    socket = tls_stack.config.envoy_admin_socket
    assert socket is not None
    mode = socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
    assert not await port_open("127.0.0.1", tls_stack.config.envoy_admin_port)
    assert (await _admin(tls_stack, "/ready")).strip() == "LIVE"


def test_private_keys_are_readable_by_their_owner_only(tls_stack: Stack) -> None:
    files = StackTls(tls_stack.config.home / "tls")
    assert stat.S_IMODE(files.folder.stat().st_mode) == 0o700
    for key in files.private_keys():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


async def _admin(stack: Stack, path: str) -> str:
    socket = stack.config.envoy_admin_socket
    assert isinstance(socket, Path)
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as session,
        session.get(f"http://admin{path}") as response,
    ):
        return await response.text()
