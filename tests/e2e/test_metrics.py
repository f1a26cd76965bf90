"""Debian's real ``prometheus`` scraping the local stack (docs/metrics.md): the scheduler, the agent
and Envoy's admin, configured from deploy/prometheus.yml with the stack's free ports; series read
back with PromQL over the HTTP API, and every query of the Grafana dashboard evaluated."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from stack.ports import free_ports
from tests.e2e.conftest import Stack, eventually, iris_model
from tests.e2e.test_serving_path import GRPC_IRIS, grpc_infer, load, unload

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "meshserve-dashboard.json"
MODEL = "promiris"


def prometheus_binary() -> str:
    """Debian's prometheus; installed here when missing and we may (CI installs it in .ci/run)."""
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            "apt-get install -y prometheus || (apt-get update && apt-get install -y prometheus)",
            shell=True,
            check=False,
            capture_output=True,
            timeout=600,
        )
        found = shutil.which("prometheus")
    if found is None:
        pytest.skip("Debian's prometheus is not installed and cannot be here (apt-get install -y prometheus)")
    return found


def scrape_config(stack: Stack) -> dict[str, Any]:
    """deploy/prometheus.yml with the stack's ports and a 1 s scrape interval."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    # The agent's port as it runs now: an earlier test may have moved its replica to fresh ports.
    (agent_port,) = (
        a.split("=")[1] for a in stack.supervisor.component("agent").argv if a.startswith("--metrics-port=")
    )
    ports = {
        "scheduler": stack.config.scheduler_metrics_port,
        "agents": int(agent_port),
        "envoy": stack.config.envoy_admin_port,
    }
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        (static,) = job["static_configs"]
        static["targets"] = [f"127.0.0.1:{ports[job['job_name']]}"]
    return config


@pytest.fixture(scope="module")
def prometheus_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary()
    folder = tmp_path_factory.mktemp("prometheus")
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(scrape_config(stack)))
    (port,) = free_ports(1)
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def value(session: aiohttp.ClientSession, url: str, promql: str) -> float | None:
    result = await query(session, url, promql)
    return sum(float(series["value"][1]) for series in result) if result else None


@pytest.fixture(scope="module")
async def prometheus(prometheus_url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{prometheus_url}/-/ready") as response:
                    return response.status == 200
            return False

        await eventually(ready, timeout=60, what="prometheus ready")
        yield session, prometheus_url


async def test_prometheus_reads_the_agent_the_scheduler_and_envoy(
    stack: Stack, prometheus: tuple[aiohttp.ClientSession, str]
) -> None:
    session, url = prometheus

    async def all_up() -> bool:
        result = await query(session, url, "up")
        return {r["metric"]["job"] for r in result if r["value"][1] == "1"} == {
            "scheduler",
            "agents",
            "envoy",
        }

    await eventually(all_up, timeout=60, what="every target scraped and up")

    await load(stack, iris_model(MODEL))
    try:
        await stack.wait_state(MODEL, "ModelAvailable")
        for _ in range(3):
            response = await stack.infer(MODEL, path_model=MODEL)
            assert response.status == 200
        await grpc_infer(stack, MODEL, GRPC_IRIS)

        labels = f'model="{MODEL}",model_internal="{MODEL}_1",server="mlserver",server_replica="0"'
        rest = f'seldon_model_infer_total{{{labels},method_type="rest",code="200"}}'
        grpc = f'seldon_model_infer_total{{{labels},method_type="grpc",code="OK"}}'
        # Per model version whichever cluster serves it (own or its replica set's): the route's.
        envoy = f'envoy_vhost_route_upstream_rq_total{{envoy_route="{MODEL}_1_http"}}'
        available = 'meshserve_scheduler_models{state="ModelAvailable"}'

        async def scraped() -> bool:
            return (
                (await value(session, url, rest) or 0) >= 3
                and (await value(session, url, grpc) or 0) >= 1
                and (await value(session, url, envoy) or 0) >= 3
            )

        await eventually(scraped, timeout=30, what="the inferences scraped by prometheus")
        assert await value(session, url, rest) == 3
        assert await value(session, url, grpc) == 1
        assert await value(session, url, envoy) == 3

        async def counted_available() -> bool:
            return (await value(session, url, available) or 0) >= 1

        await eventually(counted_available, timeout=10, what="the scheduler's available models scraped")
        assert await value(session, url, f'seldon_loaded_model_gauge{{model_internal="{MODEL}_1"}}') == 1
        assert await value(session, url, "seldon_cache_evict_count") == 0
        assert await value(session, url, "meshserve_scheduler_envoys_connected") == 1
        load_count = 'meshserve_scheduler_api_seconds_count{method="LoadModel",outcome="ok"}'
        assert (await value(session, url, load_count) or 0) >= 1
    finally:
        await unload(stack, MODEL)
        await stack.wait_gone(MODEL)


async def test_every_dashboard_query_evaluates(prometheus: tuple[aiohttp.ClientSession, str]) -> None:
    session, url = prometheus
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    targets = [target for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(targets) >= 10
    for target in targets:
        await query(session, url, target["expr"].replace("$__rate_interval", "1m"))


async def test_the_deployed_scrape_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        prometheus_binary()  # installs both, or skips
        promtool = shutil.which("promtool")
    assert promtool is not None
    checked = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "config",
        str(SCRAPE_CONFIG),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await checked.communicate()
    assert checked.returncode == 0, output.decode()
