"""Runs the local stack's processes: start in order, wait for each to be ready, restart on crash.

Every child runs in its own session (process group), so stopping a component also stops what it
spawned (MLServer's workers). The pids are written to ``stack.json`` as soon as each process
starts, so ``meshserve down`` can clean up even if this supervisor itself was SIGKILLed.

Restarts (:meth:`Supervisor.supervise`):

* A server replica is one unit (``Component.group``): its MLServer and agent share a restart count
  and backoff, move to fresh ports together (the agent is restarted with the MLServer's new ports)
  and are given up together (the replica deregisters, so its models are placed elsewhere). A dead
  agent is restarted alone: its MLServer keeps serving and the new agent adopts its models. A dead
  MLServer restarted on its own ports keeps its agent, whose watcher (agent/watch.py) reports
  the lost models within ~2 s and so takes the replica out of their routes at once; a restarted
  agent would leave it routed until it subscribed again (after the new MLServer is live, ~5 s).
* The delay before a unit's restart doubles from 0.5 s up to 10 s; a process that ran
  ``healthy_seconds`` starts its unit's count and delay afresh.
* After ``restart_limit`` restarts without a healthy run the supervisor gives up on the unit, and
  at once when a process exits with :data:`apis.exits.FATAL_CONFIG` (restarting cannot mend its
  configuration or state). The unit stays stopped; ``stack.json``'s ``failed`` says why and
  ``meshserve status`` shows it ("crash loop: gave up after 5 restarts, see logs/scheduler.log").
* Before each start a unit's ports are checked; a replica whose port was taken, or whose log says
  its bind failed, is started again on fresh ports (``Component.rebind``). The scheduler's and
  Envoy's ports are the user's: a taken one is an error naming the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from apis.exits import FATAL_CONFIG
from stack.components import Component, components
from stack.config import StackConfig
from stack.controller import ServerController
from stack.probes import port_free
from stack.processes import Running, last_error, log_says_bind_failed, spawn, terminate, terminate_group

log = structlog.get_logger("meshserve.stack")

RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 10.0
DEPENDENT_STOP_GRACE = 5.0


class StackError(RuntimeError):
    pass


@dataclass
class Restarts:
    """One unit's restarts since it last ran for ``healthy_seconds``."""

    count: int = 0
    delay: float = RESTART_BACKOFF_INITIAL


class Supervisor:
    """Starts the stack's components in order, records their pids, restarts the ones that crash
    (a server replica as one unit) and stops them all (the rules are in the module docstring)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._running: dict[str, Running] = {}
        self._ready = False
        self._changed = asyncio.Event()  # wakes the supervise loop when components come or go
        self._restarts: dict[str, Restarts] = {}  # per unit
        self._recovering: dict[str, asyncio.Task[None]] = {}  # per unit: a restart in progress
        # Set by stop(): a component that exits from here on was stopped, not crashed.
        self._stopping = False
        self._starting: set[str] = set()  # units being started by start/add: not watched yet
        self._failed: dict[str, str] = {}  # component -> why it is not running (given up)

    async def start(self, only: set[str] | None = None) -> None:
        """Start the components in order (all, or just those named in ``only``)."""
        self.config.logs.mkdir(parents=True, exist_ok=True)
        planned = components(self.config)
        for unit in _units(planned):
            members = [c for c in unit if (only is None or c.name in only) and c.name not in self._running]
            if members:
                await self._start_unit(members, wait_last=True)
        self._ready = len(self._running) == len(planned)
        self._write_state()

    def pid(self, name: str) -> int:
        return self._running[name].process.pid

    def running(self, name: str) -> bool:
        return name in self._running

    def failed(self, name: str) -> str | None:
        """Why the supervisor gave up on ``name``, if it did."""
        return self._failed.get(name)

    def component(self, name: str) -> Component:
        """The definition ``name`` runs with now (a replica restarted on fresh ports has new ones)."""
        return self._running[name].component

    async def add(self, *members: Component) -> None:
        """Start one more unit (a server replica the controller wants: its MLServer, then its
        agent) and wait until each is ready."""
        unit = members[0].unit
        self._starting.add(unit)
        try:
            await self._start_unit(list(members), wait_last=True)
        except StackError:
            for member in members:
                await self.remove(member.name)
            raise
        finally:
            self._starting.discard(unit)
            self._changed.set()

    async def remove(self, name: str, grace: float = 15.0) -> None:
        running = self._running.get(name)
        unit = running.component.unit if running is not None else None
        recovery = self._recovering.get(unit) if unit is not None else None
        if recovery is not None:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery
        self._failed.pop(name, None)
        running = self._running.pop(name, None)
        if running is None:
            self._write_state()
            return
        self._changed.set()
        await terminate(running, grace)
        log.info("component stopped", component=name)
        self._write_state()

    # -- starting ----------------------------------------------------------------------------------

    async def _start_unit(
        self, members: list[Component], *, wait_last: bool, bind_failed: bool = False
    ) -> None:
        """Start ``members`` in order (on fresh ports if theirs are taken), each ready before the
        next starts; the last is waited for only if ``wait_last``."""
        members = self._on_free_ports(members, bind_failed=bind_failed)
        for position, component in enumerate(members):
            await self._spawn(component)
            if wait_last or position < len(members) - 1:
                await self._wait_ready(component)
                log.info("component ready", component=component.name)

    def _on_free_ports(self, members: list[Component], *, bind_failed: bool) -> list[Component]:
        taken = [port for c in members for port in c.binds if not port_free(self.config.host, port)]
        if not taken and not bind_failed:
            return members
        first = members[0]
        if first.rebind is None or not first.binds:
            if taken:
                ports = ", ".join(str(p) for p in taken)
                raise StackError(
                    f"{first.name} cannot start: port {ports} on {self.config.host} is in use by another "
                    "process; stop it or start the stack on other ports (see `meshserve up --help`)"
                )
            return members
        fresh = {c.name: c for c in first.rebind()}
        rebound = [fresh[c.name] for c in members]
        log.warning(
            "ports taken; starting on fresh ports",
            unit=first.unit,
            taken=taken or "bind failed",
            ports=[p for c in rebound for p in c.binds],
        )
        return rebound

    async def _spawn(self, component: Component) -> None:
        running = await spawn(component, self._log_path(component.name), cwd=self.config.home)
        self._failed.pop(component.name, None)
        self._running[component.name] = running
        self._write_state()  # at once: `meshserve down` must find it even if we are killed now

    async def _wait_ready(self, component: Component) -> None:
        running = self._running[component.name]
        deadline = time.monotonic() + component.ready_timeout
        while time.monotonic() < deadline:
            if running.process.returncode is not None:
                last = last_error(self._log_path(component.name))
                raise StackError(
                    f"{component.name} exited with code {running.process.returncode}"
                    + (f" ({last})" if last else "")
                    + f"; see {self._log_path(component.name)}"
                )
            if await component.ready():
                return
            await asyncio.sleep(0.2)
        raise StackError(f"{component.name} was not ready after {component.ready_timeout:.0f} s")

    def _log_path(self, name: str) -> Path:
        return self.config.logs / f"{name}.log"

    # -- restarting --------------------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart any component that dies, until ``stop`` is set."""
        try:
            while not stop.is_set():
                self._changed.clear()
                busy = self._starting | self._recovering.keys()
                waits = {
                    asyncio.ensure_future(r.process.wait()): (n, r)
                    for n, r in self._running.items()
                    if r.component.unit not in busy
                }
                wakers = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._changed.wait())}
                done, pending = await asyncio.wait({*waits, *wakers}, return_when=asyncio.FIRST_COMPLETED)
                for future in pending:
                    future.cancel()
                if stop.is_set() or self._stopping:
                    return
                for future in done & waits.keys():
                    name, running = waits[future]
                    unit = running.component.unit
                    if self._running.get(name) is not running or unit in self._recovering:
                        continue  # removed on purpose, or its unit is already being restarted
                    task = asyncio.create_task(self._recover(name))
                    self._recovering[unit] = task
                    task.add_done_callback(functools.partial(self._recovered, unit))
        finally:
            tasks = list(self._recovering.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _recovered(self, unit: str, task: asyncio.Task[None]) -> None:
        if self._recovering.get(unit) is task:
            del self._recovering[unit]
        self._changed.set()
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("restart crashed", unit=unit, error=repr(error))

    async def _recover(self, name: str) -> None:
        """Restart ``name`` (which exited), with backoff; with the members of its unit after it when
        it must move to fresh ports. Gives the whole rest of the unit up when it gives up."""
        dead = self._running[name]
        unit = dead.component.unit
        code = dead.process.returncode
        pair = self._from(dead.component)
        dead.log_file.close()
        restarts = self._restarts.setdefault(unit, Restarts())
        if time.monotonic() - dead.started >= self.config.healthy_seconds:
            restarts.count, restarts.delay = 0, RESTART_BACKOFF_INITIAL
        bind_failed = log_says_bind_failed(self._log_path(name))
        while True:
            reason = self._give_up_reason(name, code, restarts)
            if reason is not None:
                # A replica whose MLServer is given up loses its agent too: it deregisters, and the
                # scheduler places its models elsewhere.
                self._give_up(pair, name, reason)
                return
            delay = restarts.delay
            restarts.count += 1
            restarts.delay = min(delay * 2, RESTART_BACKOFF_MAX)
            log.warning(
                "component exited; restarting",
                component=name,
                code=code,
                after=delay,
                restart=restarts.count,
                limit=self.config.restart_limit,
            )
            await asyncio.sleep(delay)
            moving = bind_failed or not all(port_free(self.config.host, p) for p in pair[0].binds)
            members = pair if moving and pair[0].rebind is not None else pair[:1]
            for member in members[1:]:  # the agent restarts with its MLServer's new ports
                if (running := self._running.get(member.name)) is not None:
                    await terminate(running, DEPENDENT_STOP_GRACE, member.stop_at_once)
            try:
                await self._start_unit(members, wait_last=False, bind_failed=bind_failed)
                return
            except StackError as error:
                log.warning("restart failed", unit=unit, error=str(error))
                name, code = self._first_exited(members)
                for member in members:
                    if (running := self._running.get(member.name)) is not None:
                        await terminate(running, DEPENDENT_STOP_GRACE, member.stop_at_once)
                bind_failed = log_says_bind_failed(self._log_path(name)) or "is in use" in str(error)

    def _from(self, component: Component) -> list[Component]:
        """``component`` and the members of its unit started after it, in start order."""
        if not component.group:
            return [component]
        unit = [r.component for r in self._running.values() if r.component.group == component.group]
        return unit[unit.index(component) :]

    def _first_exited(self, members: list[Component]) -> tuple[str, int | None]:
        for member in members:
            running = self._running.get(member.name)
            if running is not None and running.process.returncode is not None:
                return member.name, running.process.returncode
        return members[0].name, None

    def _give_up_reason(self, name: str, code: int | None, restarts: Restarts) -> str | None:
        logs = f"logs/{name}.log"
        if code == FATAL_CONFIG:
            last = last_error(self._log_path(name))
            said = f": {last}" if last else ""
            return f"fatal configuration or state error (exit {code}){said}; see {logs}"
        if restarts.count >= self.config.restart_limit:
            return f"crash loop: gave up after {restarts.count} restarts, see {logs}"
        return None

    def _give_up(self, members: list[Component], name: str, reason: str) -> None:
        log.error("giving up on component", component=name, reason=reason)
        for member in members:
            running = self._running.pop(member.name, None)
            if running is not None:
                terminate_group(running.process.pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    running.log_file.close()
            self._failed[member.name] = reason if member.name == name else f"stopped with {name}: {reason}"
        self._write_state()

    async def operate(self, stop: asyncio.Event) -> None:
        """Supervise the processes and run the Server controller until ``stop`` is set."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.supervise(stop))
            tasks.create_task(ServerController(self).run(stop))

    async def stop(self, grace: float = 15.0) -> None:
        # Before the first process is signalled: supervise() must not restart what stop() ends.
        self._stopping = True
        for task in list(self._recovering.values()):
            task.cancel()
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)
        for name in reversed(list(self._running)):
            running = self._running[name]
            await terminate(running, grace, running.component.stop_at_once)
            log.info("component stopped", component=name)
        self._running.clear()
        with contextlib.suppress(FileNotFoundError):
            self.config.state_file.unlink()

    def _write_state(self) -> None:
        config = self.config
        mlserver = self._running.get("mlserver")
        http, grpc_port, metrics = (
            mlserver.component.binds
            if mlserver is not None and len(mlserver.component.binds) == 3
            else (config.mlserver_http_port, config.mlserver_grpc_port, config.mlserver_metrics_port)
        )
        state = {
            "supervisor": os.getpid(),
            "ready": self._ready,
            "components": {name: r.process.pid for name, r in self._running.items()},
            "failed": dict(self._failed),
            "ports": {
                "http": config.http_port,
                "scheduler": config.scheduler_port,
                "agent": config.agent_port,
                "xds": config.xds_port,
                "envoy_admin": config.envoy_admin_port,
                "mlserver_http": http,
                "mlserver_grpc": grpc_port,
                "mlserver_metrics": metrics,
            },
        }
        temporary = config.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(config.state_file)


def _units(planned: list[Component]) -> list[list[Component]]:
    """``planned`` grouped into restart units, in start order."""
    units: dict[str, list[Component]] = {}
    for component in planned:
        units.setdefault(component.unit, []).append(component)
    return list(units.values())


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
