"""Free ports: distinct, and never one the stack already chose for a process not yet started."""

from __future__ import annotations

from pathlib import Path

from stack.components import components
from stack.config import StackConfig
from stack.ports import free_ports


def test_ports_already_chosen_are_never_handed_out_again() -> None:
    first = free_ports(8)
    again = free_ports(64, avoid=first)
    assert len(set(first)) == 8 and len(set(again)) == 64
    assert not set(first) & set(again)


def test_a_replicas_own_ports_avoid_the_stacks(tmp_path: Path) -> None:
    config = StackConfig.on_free_ports(tmp_path / "home")
    config.home.mkdir()
    agent = next(c for c in components(config) if c.name == "agent")
    flags = dict(a.removeprefix("--").split("=", 1) for a in agent.argv if a.startswith("--") and "=" in a)
    # Its metrics port is the stack's own setting; the others are chosen for the replica.
    own = {int(flags[f]) for f in ("debug-port", "reload-http-port", "reload-grpc-port")}
    assert len(own) == 3 and not own & config.ports()
