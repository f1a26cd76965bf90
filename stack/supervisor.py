"""Runs the local stack's processes: start in order, wait for each to be ready, restart on crash.

Every child runs in its own session (process group), so stopping a component also stops what it
spawned (MLServer's workers). The pids are written to ``stack.json`` so ``meshserve down`` can
clean up even if this supervisor itself was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import IO

import structlog

from stack.components import Component, child_env, components
from stack.config import StackConfig
from stack.controller import ServerController

log = structlog.get_logger("meshserve.stack")

RESTART_BACKOFF_MAX = 10.0


class StackError(RuntimeError):
    pass


@dataclass
class Running:
    component: Component
    process: asyncio.subprocess.Process
    log_file: IO[bytes]


class Supervisor:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._running: dict[str, Running] = {}
        self._ready = False
        self._changed = asyncio.Event()  # wakes the supervise loop when components come or go

    async def start(self, only: set[str] | None = None) -> None:
        """Start the components in order (all, or just those named in ``only``)."""
        self.config.logs.mkdir(parents=True, exist_ok=True)
        planned = components(self.config)
        for component in planned:
            if (only is None or component.name in only) and component.name not in self._running:
                await self._spawn(component)
                await self._wait_ready(component)
                log.info("component ready", component=component.name)
        self._ready = len(self._running) == len(planned)
        self._write_state()

    def pid(self, name: str) -> int:
        return self._running[name].process.pid

    def running(self, name: str) -> bool:
        return name in self._running

    async def add(self, component: Component) -> None:
        """Start one more component (a server replica the controller wants) and wait until ready."""
        await self._spawn(component)
        self._changed.set()
        try:
            await self._wait_ready(component)
        except StackError:
            await self.remove(component.name)
            raise
        log.info("component ready", component=component.name)

    async def remove(self, name: str, grace: float = 15.0) -> None:
        running = self._running.pop(name, None)
        if running is None:
            return
        self._changed.set()
        await _terminate(running, grace)
        log.info("component stopped", component=name)
        self._write_state()

    async def _spawn(self, component: Component) -> None:
        log_file = (self.config.logs / f"{component.name}.log").open("ab")
        process = await asyncio.create_subprocess_exec(
            *component.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(component),
            cwd=self.config.home,
            start_new_session=True,
        )
        self._running[component.name] = Running(component, process, log_file)
        self._write_state()

    async def _wait_ready(self, component: Component) -> None:
        running = self._running[component.name]
        deadline = time.monotonic() + component.ready_timeout
        while time.monotonic() < deadline:
            if running.process.returncode is not None:
                raise StackError(
                    f"{component.name} exited with code {running.process.returncode}; "
                    f"see {self.config.logs / (component.name + '.log')}"
                )
            if await component.ready():
                return
            await asyncio.sleep(0.2)
        raise StackError(f"{component.name} was not ready after {component.ready_timeout:.0f} s")

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart any component that dies, until ``stop`` is set."""
        backoff: dict[str, float] = {}
        while not stop.is_set():
            self._changed.clear()
            waits = {asyncio.ensure_future(r.process.wait()): (n, r) for n, r in self._running.items()}
            wakers = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._changed.wait())}
            done, pending = await asyncio.wait({*waits, *wakers}, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            if stop.is_set():
                return
            for future in done & waits.keys():
                name, running = waits[future]
                if self._running.get(name) is not running:
                    continue  # removed on purpose
                delay = backoff.get(name, 0.5)
                backoff[name] = min(delay * 2, RESTART_BACKOFF_MAX)
                log.warning("component exited; restarting", component=name, code=future.result(), after=delay)
                running.log_file.close()
                await asyncio.sleep(delay)
                await self._spawn(running.component)

    async def operate(self, stop: asyncio.Event) -> None:
        """Supervise the processes and run the Server controller until ``stop`` is set."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.supervise(stop))
            tasks.create_task(ServerController(self).run(stop))

    async def stop(self, grace: float = 15.0) -> None:
        for name in reversed(list(self._running)):
            await _terminate(self._running[name], grace)
            log.info("component stopped", component=name)
        self._running.clear()
        with contextlib.suppress(FileNotFoundError):
            self.config.state_file.unlink()

    def _write_state(self) -> None:
        state = {
            "supervisor": os.getpid(),
            "ready": self._ready,
            "components": {name: r.process.pid for name, r in self._running.items()},
            "ports": {
                "http": self.config.http_port,
                "scheduler": self.config.scheduler_port,
                "agent": self.config.agent_port,
                "xds": self.config.xds_port,
                "envoy_admin": self.config.envoy_admin_port,
                "mlserver_http": self.config.mlserver_http_port,
                "mlserver_grpc": self.config.mlserver_grpc_port,
            },
        }
        temporary = self.config.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.config.state_file)


async def _terminate(running: Running, grace: float) -> None:
    terminate_group(running.process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(running.process.wait(), grace)
    except TimeoutError:
        terminate_group(running.process.pid, signal.SIGKILL)
        await running.process.wait()
    # Children the component left behind in its group (e.g. MLServer workers).
    terminate_group(running.process.pid, signal.SIGKILL)
    running.log_file.close()


def terminate_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


async def run(config: StackConfig, on_ready: asyncio.Event | None = None) -> int:
    """Run the stack until SIGTERM/SIGINT. Returns a process exit code."""
    supervisor = Supervisor(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await supervisor.start()
        if on_ready is not None:
            on_ready.set()
        await supervisor.operate(stop)
        return 0
    except StackError as error:
        log.error("stack failed to start", error=str(error))
        return 1
    finally:
        await supervisor.stop()
