"""apis.runtime: a process's event loop (checked in a child process: it changes the GC for good)."""

from __future__ import annotations

import os
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


EXPERIMENTS = """
import os
from apis import runtime
runtime.fewer_grpc_thread_hops()
import grpc
print(os.environ["GRPC_EXPERIMENTS"])
try:
    runtime.fewer_grpc_thread_hops()
except RuntimeError:
    print("refused after import")
"""


def test_the_grpc_setting_is_made_before_grpc_loads_and_an_operators_own_wins() -> None:
    child = [sys.executable, "-c", EXPERIMENTS]
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    ours = subprocess.run(child, capture_output=True, text=True, timeout=60, check=True, env=env)
    assert ours.stdout.split("\n")[:2] == ["-event_engine_listener", "refused after import"]
    theirs = subprocess.run(
        child, capture_output=True, text=True, timeout=60, check=True, env={**env, "GRPC_EXPERIMENTS": "x"}
    )
    assert theirs.stdout.startswith("x\n")
