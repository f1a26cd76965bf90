"""Settings of the local stack: where state lives and which loopback ports each process uses."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apis.names import DEFAULT_CAPABILITIES


def port_defaults() -> dict[str, int]:
    """Every ``*_port`` setting and its default: the single list ``meshserve up`` exposes as flags."""
    return {f.name: f.default for f in dataclasses.fields(StackConfig) if f.name.endswith("_port")}  # type: ignore[misc]


def default_home() -> Path:
    return Path(os.environ.get("MESHSERVE_HOME", ".meshserve")).resolve()


@dataclass(frozen=True)
class StackConfig:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"  # every listener binds to loopback in the local stack
    http_port: int = 9000
    xds_port: int = 9002
    scheduler_port: int = 9004
    agent_port: int = 9005
    envoy_admin_port: int = 9901
    mlserver_http_port: int = 8080
    mlserver_grpc_port: int = 9500
    mlserver_metrics_port: int = 8082
    server_name: str = "mlserver"
    capabilities: str = DEFAULT_CAPABILITIES
    memory_bytes: int = 2_000_000_000
    overcommit_percentage: int = 10
    agent_grace_seconds: float = 15.0

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def python(self) -> str:
        return sys.executable

    def binary(self, name: str) -> str:
        """A console script of this environment (envoy, mlserver), else from PATH."""
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.exists() else shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} is not installed (run `make up`, which installs it)")
        return found

    @classmethod
    def on_free_ports(cls, home: Path, **overrides: Any) -> StackConfig:
        """A stack on loopback ports free right now (tests and benchmarks run beside other stacks)."""
        from stack.ports import free_ports

        settings = port_defaults()
        values: dict[str, Any] = dict(zip(settings, free_ports(len(settings)), strict=True))
        values["agent_grace_seconds"] = 5.0
        return cls(home=home, **{**values, **overrides})

    @property
    def config_file(self) -> Path:
        return self.home / "config.json"

    def save(self) -> None:
        """Written by ``up`` so the detached supervisor, ``status`` and ``down`` see the same ports."""
        values: dict[str, Any] = dataclasses.asdict(self)
        values["home"] = str(self.home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(values, indent=2))

    @classmethod
    def load(cls, home: Path) -> StackConfig:
        try:
            values = json.loads((home / "config.json").read_text())
        except FileNotFoundError:
            return cls(home=home)
        values["home"] = Path(values["home"])
        return cls(**values)
