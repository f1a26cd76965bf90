"""How a long-running meshserve process runs its event loop (the scheduler, the dataflow engine).

Contract: a process's ``main`` calls :func:`run` once, instead of ``asyncio.run``. Measured on this
machine (docs/benchmarks.md, figure 3): uvloop's loop and fewer young-generation collections take
about a tenth off the scheduler's CPU per isolated change, which is nearly all gRPC wake-ups and
short-lived protobuf objects.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (Python's default: 700)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when installed (asyncio's loop otherwise), with fewer collections."""
    fewer_collections()
    with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
        return runner.run(main)


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
