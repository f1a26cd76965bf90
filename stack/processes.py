"""One process of the local stack: how it is started, what its log says, and how it is ended.

Every child runs in its own session (process group), so ending one also ends what it spawned
(MLServer's workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stack.components import Component

# How a process's log says it could not listen (uvicorn/MLServer, grpc in the scheduler, Envoy).
BIND_FAILURES = ("address already in use", "errno 98", "cannot listen on", "cannot bind")
LOG_TAIL_BYTES = 16_384


@dataclass
class Running:
    """A started component: its process, the log it writes to, and when it started."""

    component: Component
    process: asyncio.subprocess.Process
    log_file: IO[bytes]
    started: float = field(default_factory=time.monotonic)


async def spawn(component: Component, log_path: Path, *, cwd: Path) -> Running:
    """Start ``component`` in a session of its own, its output appended to ``log_path``."""
    log_file = log_path.open("ab")
    process = await asyncio.create_subprocess_exec(
        *component.argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
        env=child_env(component),
        cwd=cwd,
        start_new_session=True,
    )
    return Running(component, process, log_file)


def child_env(component: Component) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **component.env}


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def log_says_bind_failed(path: Path) -> bool:
    tail = _log_tail(path).lower()
    return any(marker in tail for marker in BIND_FAILURES)


def last_error(path: Path) -> str:
    """The last line of a log that reads like an error (the one clear message a process died with)."""
    for line in reversed(_log_tail(path).splitlines()):
        lowered = line.lower()
        if "error" in lowered or "fatal" in lowered or "critical" in lowered:
            return line.strip()[:300]
    return ""


async def terminate(running: Running, grace: float, signum: signal.Signals = signal.SIGTERM) -> None:
    """``signum``, then SIGKILL after ``grace``; the group is killed and the log closed even when
    the caller is cancelled half-way (the stack stopping while a replica is being removed)."""
    try:
        terminate_group(running.process.pid, signum)
        try:
            await asyncio.wait_for(running.process.wait(), grace)
        except TimeoutError:
            terminate_group(running.process.pid, signal.SIGKILL)
            await running.process.wait()
    finally:
        # Children the component left behind in its group (e.g. MLServer workers).
        terminate_group(running.process.pid, signal.SIGKILL)
        running.log_file.close()


def terminate_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
