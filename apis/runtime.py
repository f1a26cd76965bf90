"""How a long-running meshserve process runs its event loop and gRPC (the scheduler, the engine).

Contract: a process's ``main`` calls :func:`run` once, instead of ``asyncio.run``; a gRPC server
process calls :func:`fewer_grpc_thread_hops` before anything imports ``grpc``; the scheduler's
servers and the agents' channels to them pass :data:`NO_BDP_PROBE`. Measured on this
machine side by side (docs/benchmarks.md, figure 3; decision 0029): uvloop's loop and fewer
young-generation collections take about 0.6 ms, and the poller-served listener about 1 ms more,
off the scheduler's CPU per isolated change, which is nearly all gRPC wake-ups and short-lived
protobuf objects.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)
# gRPC core's accepted connections on its own poller instead of the EventEngine listener, whose
# reads hop between its thread pool's threads: a no-op unary call costs the server about 1.1 ms of
# CPU instead of 1.5-1.8 ms when it arrives alone (measured with bench/grpc_floor.py).
GRPC_EXPERIMENTS = "-event_engine_listener"
# gRPC's BDP probe (a PING after received data, sizing flow-control windows for bulk transfers)
# arms timers on gRPC's EventEngine, whose idle pool threads then poll with a backoff (15 ms, x1.3)
# for the next second: about 0.5 ms of the scheduler's CPU per isolated change (decision 0032).
# Control-plane messages are small, and without the probe large ones still cross loopback as fast.
# For the scheduler's servers and the long-lived channels that talk to them, not the data plane.
NO_BDP_PROBE: tuple[str, int] = ("grpc.http2.bdp_probe", 0)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed (asyncio's loop otherwise), with fewer collections."""
    fewer_collections()
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main)


def fewer_grpc_thread_hops() -> None:
    """Set :data:`GRPC_EXPERIMENTS` unless the operator set their own; gRPC reads it once, on
    import, so this raises if ``grpc`` is imported already (the setting would silently not apply)."""
    if "grpc" in sys.modules:
        raise RuntimeError("fewer_grpc_thread_hops() must run before grpc is imported")
    os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)


def fewer_collections() -> None:
    """Collect the young generation less often, and never scan what was imported at start.

    A request or an xDS/agent message allocates hundreds of short-lived container objects (headers,
    tensors, protobuf messages) that reference counting frees; at the default threshold the cycle
    collector ran every few of them and took a few percent of the CPU, finding nothing to free.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when installed (its transports and wake-ups cost less), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
