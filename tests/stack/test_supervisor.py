"""The supervisor with stand-in processes (small Python scripts): restarts of a replica pair, backoff
reset, crash-loop and fatal-exit give-up, fresh ports for a taken one, and `meshserve down` after the
supervisor itself was SIGKILLed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from apis.exits import FATAL_CONFIG
from stack import commands
from stack.components import Component
from stack.config import StackConfig
from stack.ports import free_ports
from stack.probes import port_open
from stack.supervisor import Supervisor

PY = sys.executable
LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('listening', flush=True); time.sleep(600)"
)
SLEEP = "import time; time.sleep(600)"
# Leaves a grandchild in its process group, as MLServer's workers would be.
WITH_CHILD = (
    "import subprocess, sys, time\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
)
ROOT = Path(__file__).resolve().parents[2]


async def _ready() -> bool:
    return True


def script(name: str, code: str, *args: str, **fields: object) -> Component:
    return Component(name, [PY, "-c", code, *args], ready=_ready, ready_timeout=20, **fields)  # type: ignore[arg-type]


def pair(port: int) -> list[Component]:
    """A stand-in server replica: an 'MLServer' listening on ``port`` and its 'agent'."""

    def rebind() -> list[Component]:
        return pair(free_ports(1)[0])

    def listening() -> Awaitable[bool]:
        return port_open("127.0.0.1", port)

    group = "replica s/0"
    return [
        Component(
            "ml",
            [PY, "-c", LISTEN, str(port)],
            ready=listening,
            ready_timeout=20,
            group=group,
            binds=(port,),
            rebind=rebind,
        ),
        Component("ag", [PY, "-c", SLEEP, str(port)], ready=_ready, group=group, rebind=rebind),
    ]


def config(home: Path, **overrides: object) -> StackConfig:
    home.mkdir(parents=True, exist_ok=True)
    return StackConfig(home=home, **overrides)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (a SIGKILLed supervisor's children become init's)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
async def supervised(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Supervisor]]]:
    started: list[tuple[Supervisor, asyncio.Event, asyncio.Task[None]]] = []

    async def make(**overrides: object) -> Supervisor:
        supervisor = Supervisor(config(tmp_path / "home", **overrides))
        supervisor.config.logs.mkdir(parents=True, exist_ok=True)
        stop = asyncio.Event()
        started.append((supervisor, stop, asyncio.create_task(supervisor.supervise(stop))))
        return supervisor

    yield make
    for supervisor, stop, task in started:
        stop.set()
        await task
        await supervisor.stop(grace=2)


async def test_a_replica_pair_restarts_member_by_member_and_is_given_up_together(
    supervised: Callable[..., Awaitable[Supervisor]],
) -> None:
    supervisor = await supervised(restart_limit=2)
    await supervisor.add(*pair(free_ports(1)[0]))
    ml, ag = supervisor.pid("ml"), supervisor.pid("ag")

    os.kill(ag, signal.SIGKILL)
    await eventually(lambda: supervisor.pid("ag") != ag, what="the agent to restart")
    assert supervisor.pid("ml") == ml  # its MLServer kept serving

    ag = supervisor.pid("ag")
    os.kill(ml, signal.SIGKILL)  # same ports free: the agent stays (its watcher reports the loss)
    await eventually(lambda: supervisor.pid("ml") != ml, what="the MLServer to restart")
    assert supervisor.pid("ag") == ag
    port = supervisor.component("ml").binds[0]
    await eventually(lambda: not _free(port), what="the new MLServer to listen")

    # The pair's restart count is shared: one more death is past the limit of 2.
    os.kill(supervisor.pid("ml"), signal.SIGKILL)
    await eventually(lambda: supervisor.failed("ml") is not None, what="the supervisor to give up")
    assert supervisor.failed("ag") == f"stopped with ml: {supervisor.failed('ml')}"
    assert not supervisor.running("ag")
    await eventually(lambda: dead(ag), what="the agent to be stopped with its MLServer")


async def test_a_crash_loop_is_given_up_after_the_limit_and_shown_in_stack_json(
    supervised: Callable[..., Awaitable[Supervisor]],
) -> None:
    supervisor = await supervised(restart_limit=2)
    await supervisor.add(script("steady", SLEEP))
    await supervisor.add(script("crash", "import time, sys; time.sleep(0.3); sys.exit(3)"))
    expected = "crash loop: gave up after 2 restarts, see logs/crash.log"
    await eventually(lambda: supervisor.failed("crash") == expected, what="the supervisor to give up")
    assert not supervisor.running("crash") and supervisor.running("steady")
    state = json.loads(supervisor.config.state_file.read_text())
    assert state["failed"] == {"crash": expected}
    assert "crash" not in state["components"]


async def test_a_fatal_exit_is_given_up_at_once_with_its_message(
    supervised: Callable[..., Awaitable[Supervisor]],
) -> None:
    supervisor = await supervised(restart_limit=5)
    code = (
        "import sys, time; time.sleep(0.3)\n"
        "print('level=error event=\"state database is corrupt\"', flush=True)\n"
        f"sys.exit({FATAL_CONFIG})"
    )
    await supervisor.add(script("fatal", code))
    await eventually(lambda: supervisor.failed("fatal") is not None, what="the supervisor to give up")
    reason = supervisor.failed("fatal") or ""
    assert reason.startswith(f"fatal configuration or state error (exit {FATAL_CONFIG})")
    assert "state database is corrupt" in reason and "logs/fatal.log" in reason
    log = (supervisor.config.logs / "fatal.log").read_text()
    assert log.count("state database is corrupt") == 1  # started once, never restarted


async def test_a_healthy_run_resets_the_restart_count(
    supervised: Callable[..., Awaitable[Supervisor]],
) -> None:
    # Dies every 0.6 s, but each run is longer than healthy_seconds: never a crash loop.
    supervisor = await supervised(restart_limit=2, healthy_seconds=0.4)
    await supervisor.add(script("flaky", "import time, sys; time.sleep(0.6); sys.exit(1)"))
    pids = {supervisor.pid("flaky")}

    def restarted_four_times() -> bool:
        if supervisor.running("flaky"):
            pids.add(supervisor.pid("flaky"))
        return len(pids) >= 5

    await eventually(restarted_four_times, timeout=20, what="four restarts")
    assert supervisor.failed("flaky") is None


async def test_a_replica_whose_port_was_taken_starts_on_fresh_ports(
    supervised: Callable[..., Awaitable[Supervisor]],
) -> None:
    supervisor = await supervised()
    with _listener() as taken:
        await supervisor.add(*pair(taken))  # taken before the first start
        first = supervisor.component("ml").binds[0]
        assert first != taken
        assert f" {first}" in " " + " ".join(supervisor.component("ag").argv)  # the agent follows

    # Taken while the replica was down (another process grabbed the port between two runs).
    ml = supervisor.pid("ml")
    os.kill(ml, signal.SIGKILL)
    await eventually(lambda: _free(first), what="the old port to be released")
    with _listener(first):
        await eventually(lambda: supervisor.pid("ml") != ml, what="the MLServer to restart")
        moved = supervisor.component("ml").binds[0]
        assert moved != first

        def agent_follows() -> bool:  # restarted with its MLServer's new port
            return supervisor.running("ag") and supervisor.component("ag").argv[-1] == str(moved)

        await eventually(agent_follows, what="the agent to restart on the new port")
        await eventually(lambda: not _free(moved), what="the MLServer to listen on its new port")
    state = json.loads(supervisor.config.state_file.read_text())
    assert state["components"]["ml"] == supervisor.pid("ml")


async def test_down_stops_every_child_after_the_supervisor_was_sigkilled(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config(home).save()
    runner = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from stack.config import StackConfig\n"
        "from stack.supervisor import Supervisor\n"
        "from tests.stack.test_supervisor import pair, script, WITH_CHILD\n"
        "from stack.ports import free_ports\n"
        "async def main():\n"
        "    s = Supervisor(StackConfig.load(Path(sys.argv[1])))\n"
        "    s.config.logs.mkdir(parents=True, exist_ok=True)\n"
        "    await s.add(*pair(free_ports(1)[0]))\n"
        "    await s.add(script('parent', WITH_CHILD))\n"
        "    await s.supervise(asyncio.Event())\n"
        "asyncio.run(main())\n"
    )
    supervisor = await asyncio.create_subprocess_exec(
        PY, "-c", runner, str(home), cwd=ROOT, start_new_session=True
    )
    try:

        def all_started() -> bool:
            try:
                state = json.loads((home / "stack.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return set(state["components"]) == {"ml", "ag", "parent"}

        await eventually(all_started, timeout=30, what="the stand-in stack to start")
        await asyncio.sleep(0.5)  # the grandchild is spawned
        state = json.loads((home / "stack.json").read_text())
        groups = {os.getpgid(pid) for pid in state["components"].values()}
        members = [p for p in _pids() if _pgid(p) in groups]
        assert len(members) == 4  # ml, ag, parent and its child

        supervisor.kill()  # SIGKILL: no clean-up of its own
        await supervisor.wait()
        assert all(alive(pid) for pid in members)  # orphans now

        assert commands.down(argparse.Namespace(home=str(home))) == 0
        await eventually(lambda: all(dead(pid) for pid in members), timeout=10, what="every child to die")
        assert not (home / "stack.json").exists()
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
            await supervisor.wait()


# -- helpers -----------------------------------------------------------------------------------------


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _listener:
    """A socket listening on ``port`` (or a fresh one) while the block runs."""

    def __init__(self, port: int = 0) -> None:
        self._socket = socket.socket()
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self._socket.listen()

    def __enter__(self) -> int:
        return int(self._socket.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self._socket.close()


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


async def test_stop_while_supervising_restarts_nothing(tmp_path: Path) -> None:
    """stop() before the watcher has ended (a test that failed, an exception in `up`): what stop()
    ends must stay ended, not be restarted as if it had crashed and then left running."""
    supervisor = Supervisor(config(tmp_path / "home", restart_limit=5))
    supervisor.config.logs.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    watcher = asyncio.create_task(supervisor.supervise(stop))
    await supervisor.add(*pair(free_ports(1)[0]))
    pids = [supervisor.pid("ml"), supervisor.pid("ag")]

    await supervisor.stop(grace=2)
    await asyncio.sleep(1.5)  # longer than the first restart's backoff
    assert not supervisor.running("ml") and not supervisor.running("ag")
    assert all(dead(pid) for pid in pids)
    stop.set()
    await asyncio.wait_for(watcher, 5)
    assert not supervisor.running("ml") and not supervisor.running("ag")
