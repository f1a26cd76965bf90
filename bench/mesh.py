"""The meshserve stack for benchmarks, built from the project's own pieces (``stack.components``).

Scheduler, MLServer and agent are started exactly as ``meshserve up`` starts them; Envoy gets the
same bootstrap but the benchmarks' common flags (``bench.envoys.envoy_argv``: pinned worker count),
so it runs like the static-config Envoy it is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.envoys import envoy_argv
from bench.procs import Process, Processes, wait_for
from stack.components import Component, components
from stack.config import StackConfig
from stack.envoy_bootstrap import write_envoy_bootstrap


def bench_config(home: Path, **overrides: object) -> StackConfig:
    return StackConfig.on_free_ports(home, **overrides)


@dataclass
class Mesh:
    config: StackConfig
    procs: dict[str, Process]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.config.envoy_admin_port}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.config.scheduler_port}"


async def start_mesh(group: Processes, config: StackConfig, only: Sequence[str]) -> Mesh:
    """Start the named components (in the stack's order) and wait until each is ready."""
    config.logs.mkdir(parents=True, exist_ok=True)  # the stack's home too (Envoy's access log goes there)
    chosen = [component for component in components(config) if component.name in only]
    return Mesh(config, await start_components(group, config, chosen))


async def start_components(
    group: Processes, config: StackConfig, chosen: Sequence[Component]
) -> dict[str, Process]:
    """Start ``chosen`` in order (e.g. a second server replica, ``stack.components.server_replica``),
    each once the one before is ready."""
    started: dict[str, Process] = {}
    for component in chosen:
        argv = component.argv
        if component.name == "envoy":
            argv = envoy_argv(config.binary("envoy"), write_envoy_bootstrap(config), config.envoy_admin_port)
        process = group.start(component.name, argv, {"MESHSERVE_HOME": str(config.home), **component.env})
        started[component.name] = process
        await _ready(component, process, list(started.values()))
    return started


async def _ready(component: Component, process: Process, alive: list[Process]) -> None:
    await wait_for(
        component.ready,
        within=component.ready_timeout,
        what=f"{component.name} ready",
        interval=0.1,
        alive=alive,
    )


async def envoy_stats(session: aiohttp.ClientSession, admin: str, pattern: str) -> dict[str, int]:
    """Counters and gauges from Envoy's admin whose names match the regex ``pattern``."""
    async with session.get(f"{admin}/stats", params={"filter": pattern, "format": "json"}) as response:
        data = await response.json()
    return {s["name"]: int(s["value"]) for s in data.get("stats", []) if "value" in s}
