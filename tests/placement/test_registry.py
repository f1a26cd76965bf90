"""Selecting a policy by name: entry points (injected here, never installed), built-ins, errors."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from scheduler.config import parse_args
from scheduler.placement import Placement, PlacementFailure, Policy
from scheduler.policies import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    PolicyError,
    UnknownPolicyError,
    available_policies,
    load_policy,
)
from scheduler.state import ModelVersion, Server

ROOT = Path(__file__).resolve().parents[2]
LEAST_LOADED = EntryPoint(
    "least-loaded", "samples.placement_plugin.meshserve_least_loaded:least_loaded", ENTRY_POINT_GROUP
)


class Everywhere:
    """A hand-written policy that is not a :class:`Policy`: satisfies the Protocol structurally."""

    name = "everywhere"

    def place(self, version: ModelVersion, servers: Sequence[Server]) -> Placement | PlacementFailure:
        return Placement(servers[0].name, tuple(servers[0].replicas)) if servers else PlacementFailure("none")


def everywhere() -> Everywhere:
    return Everywhere()


def not_a_policy() -> object:
    return object()


def broken() -> Policy:
    raise RuntimeError("boom")


def entry_point(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name, f"{__name__}:{attr}", ENTRY_POINT_GROUP)


def test_builtins_load_without_any_entry_point() -> None:
    for name in ("seldon", "binpack", "spread-hash"):
        assert load_policy(name, entry_points=[]).name == name
    assert available_policies([]) == ["binpack", "seldon", "spread-hash"]


def test_pyproject_registers_exactly_the_builtins() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][ENTRY_POINT_GROUP]
    assert set(declared) == set(BUILTIN_POLICIES)
    for name, target in declared.items():
        assert EntryPoint(name, target, ENTRY_POINT_GROUP).load() is BUILTIN_POLICIES[name]


def test_sample_plugin_declares_its_entry_point() -> None:
    project = tomllib.loads((ROOT / "samples/placement_plugin/pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == {
        "least-loaded": "meshserve_least_loaded:least_loaded"
    }


def test_plugin_entry_point_is_loaded_by_name() -> None:
    policy = load_policy("least-loaded", entry_points=[LEAST_LOADED])
    assert policy.name == "least-loaded"
    assert "least-loaded" in available_policies([LEAST_LOADED])


def test_a_plain_object_satisfying_the_protocol_is_accepted() -> None:
    policy = load_policy("everywhere", entry_points=[entry_point("everywhere", "everywhere")])
    assert isinstance(policy, Everywhere)


def test_unknown_name_lists_what_is_available() -> None:
    with pytest.raises(UnknownPolicyError) as raised:
        load_policy("round-robin", entry_points=[LEAST_LOADED])
    message = str(raised.value)
    assert "unknown placement policy 'round-robin'" in message
    assert message.endswith("available: binpack, least-loaded, seldon, spread-hash")


def test_an_entry_point_overrides_a_builtin_of_the_same_name() -> None:
    policy = load_policy("seldon", entry_points=[entry_point("seldon", "everywhere")])
    assert isinstance(policy, Everywhere)


def test_a_name_registered_twice_is_an_error() -> None:
    twice = [LEAST_LOADED, entry_point("least-loaded", "everywhere")]
    with pytest.raises(PolicyError, match="registered more than once"):
        load_policy("least-loaded", entry_points=twice)
    # The same target declared twice (e.g. two metadata copies) is fine.
    assert load_policy("least-loaded", entry_points=[LEAST_LOADED, LEAST_LOADED]).name == "least-loaded"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("not_a_policy", "returned object, not a policy"),
        ("broken", "factory 'bad' failed"),
        ("missing_attribute", r"cannot import placement policy 'bad'"),
    ],
)
def test_bad_plugins_fail_with_a_policy_error(target: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        load_policy("bad", entry_points=[entry_point("bad", target)])


def test_installed_metadata_knows_the_builtins() -> None:
    assert {"seldon", "binpack", "spread-hash"} <= set(available_policies())
    assert load_policy("spread-hash").name == "spread-hash"


def test_cli_flag_and_environment_select_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHSERVE_SCHEDULER_PLACEMENT_POLICY", raising=False)
    assert parse_args([]).placement_policy == "seldon"
    monkeypatch.setenv("MESHSERVE_SCHEDULER_PLACEMENT_POLICY", "spread-hash")
    assert parse_args([]).placement_policy == "spread-hash"
    assert parse_args(["--placement-policy", "binpack"]).placement_policy == "binpack"
