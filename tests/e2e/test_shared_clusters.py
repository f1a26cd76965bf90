"""Clusters shared per replica set, with real Envoy and MLServer (docs/decisions/0008).

A second Server (one replica, no overcommit) serves two models: both route through one pair of
clusters for that replica, over REST, gRPC and an experiment split between them, each keeping its
own request stats (the route's ``stat_prefix``). The pair goes only with the last model on it. A
model that can autoscale (``minReplicas``/``maxReplicas``: Envoy reports its load per version)
keeps clusters of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from tests.e2e.conftest import Stack, eventually, iris_model
from tests.e2e.test_cli import cli
from tests.e2e.test_experiments import experiment, grpc_route, routes, start_active, stop
from tests.e2e.test_scheduling import declare, server_yaml
from tests.e2e.test_serving_path import load, unload

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVER = "shared-replicas"
# Overcommit 0: a replica that overcommits keeps per-version clusters (decision 0008).
NO_OVERCOMMIT = {
    "containers": [{"name": "agent", "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE", "value": "0"}]}]
}
SHARED = ("sa", "sb")
OWN = "own"


@pytest.fixture(scope="module")
async def server(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    manifest = tmp_path_factory.mktemp("shared") / "server.yaml"
    manifest.write_text(server_yaml(SERVER, serverConfig="mlserver", replicas=1, podSpec=NO_OVERCOMMIT))
    await declare(stack, manifest, SERVER)
    yield stack
    unloaded = await cli(stack, "server", "unload", SERVER)
    assert unloaded.returncode == 0, unloaded.stderr


async def admin(stack: Stack, path: str) -> Any:
    async with stack.http.get(f"http://127.0.0.1:{stack.config.envoy_admin_port}{path}") as response:
        assert response.status == 200
        return json.loads(await response.text()) if path.startswith("/config_dump") else await response.text()


async def route_clusters(stack: Stack, scope: str) -> set[str]:
    """The clusters the routes of ``scope`` (a model's or an experiment's) send to, as Envoy holds them."""
    dump = await admin(stack, "/config_dump?resource=dynamic_scoped_route_configs")
    found: set[str] = set()
    for config in dump["configs"]:
        for scoped in config.get("scoped_route_configs", []):
            if scoped["name"] == scope:
                for host in scoped["route_configuration"]["virtual_hosts"]:
                    found |= {r["route"]["cluster"] for r in host["routes"]}
    return found


async def live_clusters(stack: Stack) -> set[str]:
    dump = await admin(stack, "/config_dump?resource=dynamic_active_clusters")
    return {c["cluster"]["name"] for c in dump["configs"]}


async def route_total(stack: Stack, stat_prefix: str) -> int:
    name = f"vhost.seldon_service.route.{stat_prefix}.upstream_rq_total"
    text = await admin(stack, "/stats?filter=^" + name.replace(".", "\\.") + "$")
    return int(text.split(":")[1]) if text.strip() else 0


async def test_models_on_one_replica_share_its_clusters_and_keep_their_own_stats(server: Stack) -> None:
    stack = server
    for name in SHARED:
        await load(stack, iris_model(name, server=SERVER))
    scaled = iris_model(OWN)
    scaled.deploymentSpec.minReplicas = scaled.deploymentSpec.maxReplicas = 1
    await load(stack, scaled)
    try:
        for name in (*SHARED, OWN):
            await stack.wait_state(name, "ModelAvailable", timeout=120)

        async def routed() -> bool:
            return all([await route_clusters(stack, name) for name in (*SHARED, OWN)])

        await eventually(routed, what="every model's scope in Envoy")
        pair = await route_clusters(stack, "sa")
        assert pair == await route_clusters(stack, "sb")
        assert len(pair) == 2 and all(c.startswith("replicas_h") for c in pair)
        assert await route_clusters(stack, OWN) == {f"{OWN}_1_http", f"{OWN}_1_grpc"}

        # Each answers over REST and gRPC as itself, through the shared pair.
        for name in SHARED:
            assert await routes(stack, name, 4) == {f":{name}_1:": 4}
            assert await grpc_route(stack, name) == f":{name}_1:"
            assert await route_total(stack, f"{name}_1_http") == 4
            assert await route_total(stack, f"{name}_1_grpc") == 1

        # An experiment between them splits over the same pair.
        await start_active(stack, experiment("shared-ab", [("sa", 50), ("sb", 50)]))
        try:
            assert await route_clusters(stack, "shared-ab.experiment") == pair
            assert set(await routes(stack, "shared-ab.experiment", 60)) == {":sa_1:", ":sb_1:"}
        finally:
            await stop(stack, "shared-ab")

        # The pair stays while one model still names it, and goes with the last.
        await unload(stack, "sa")
        await stack.wait_gone("sa")
        assert await routes(stack, "sb", 2) == {":sb_1:": 2}
        assert pair <= await live_clusters(stack)
        await unload(stack, "sb")
        await stack.wait_gone("sb")

        async def pair_gone() -> bool:
            return not pair & await live_clusters(stack)

        await eventually(pair_gone, what="the shared clusters removed from Envoy")
    finally:
        for name in (*SHARED, OWN):
            with contextlib.suppress(grpc.aio.AioRpcError):  # sa and sb are gone already on success
                await unload(stack, name)
