"""apis.runtime: a process's event loop (checked in a child process: it changes the GC for good)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import asyncio, gc
from apis import runtime

async def main():
    return type(asyncio.get_running_loop()).__module__

print(runtime.run(main()), gc.get_threshold()[0], gc.get_freeze_count() > 0)
"""


def test_run_uses_uvloop_and_collects_the_young_generation_less_often() -> None:
    child = [sys.executable, "-c", CHILD]
    done = subprocess.run(child, capture_output=True, text=True, timeout=60, check=True)
    module, threshold, frozen = done.stdout.split()
    assert module.startswith("uvloop") and int(threshold) == 20_000 and frozen == "True"
