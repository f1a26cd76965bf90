"""Free loopback ports, for the controller's extra replicas, the tests and the benchmarks."""

from __future__ import annotations

import socket
from collections.abc import Collection

MAX_AVOIDED = 1024  # more ports than any stack names: a bound on the sockets held while choosing


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports that were free a moment ago (bound together, so never repeated),
    none of them in ``avoid``: ports chosen earlier for processes that have not bound them yet
    are free too, and the kernel may hand them out again."""
    sockets: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            if len(sockets) >= count + MAX_AVOIDED:
                raise OSError(f"no {count} free ports outside the {len(avoid)} to avoid")
            s = socket.socket()
            sockets.append(s)  # held open while choosing, so a port is never offered twice
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                chosen.append(port)
        return chosen
    finally:
        for s in sockets:
            s.close()
