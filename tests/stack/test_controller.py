"""The local stack's Server controller and the replica it builds (no processes started)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection
from pathlib import Path

import pytest

from apis.mlops.scheduler import scheduler_pb2
from stack import controller as controller_module
from stack import ports as ports_module
from stack.components import Component, ReplicaPorts, server_replica
from stack.config import StackConfig
from stack.controller import ServerController
from stack.server_spec import default_spec
from tests.scheduler.fakes import wait_until


def test_a_replicas_ports_are_distinct_even_when_the_kernel_offers_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel hands out the same few ports again: only ``avoid`` keeps two processes apart.
    def reoffering(count: int, avoid: Collection[int] = ()) -> list[int]:
        return [p for p in range(42_111, 42_200) if p not in avoid][:count]

    monkeypatch.setattr(ports_module, "free_ports", reoffering)
    config = StackConfig(home=tmp_path)
    spec = dataclasses.replace(default_spec(config), overcommit_percent=10)
    mlserver, agent = server_replica(
        config, ReplicaPorts(42_111, 42_112, 42_113), server="extra", idx=0, spec=spec
    )
    binds = [*mlserver.binds, *agent.binds]
    assert len(set(binds)) == len(binds) == 5, binds


class FlakySupervisor:
    """Fails to start the first ``failures`` replicas (a port taken meanwhile), then starts them."""

    def __init__(self, config: StackConfig, failures: int) -> None:
        self.config = config
        self.failures = failures
        self.started: list[str] = []

    async def add(self, *members: Component) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("agent exited with code 1 (Failed to bind to address)")
        self.started += [m.name for m in members]

    async def remove(self, name: str) -> None:
        self.started.remove(name)


async def test_a_replica_that_failed_to_start_is_started_again_without_a_new_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(controller_module, "RECONNECT_SECONDS", 0.01)
    supervisor = FlakySupervisor(StackConfig(home=tmp_path), failures=2)
    controller = ServerController(supervisor)
    controller._changed(scheduler_pb2.ServerStatusResponse(serverName="extra", expectedReplicas=1))
    await wait_until(lambda: len(supervisor.started) == 2)  # its MLServer and agent
    assert supervisor.failures == 0
    await asyncio.gather(*controller._workers.values())
