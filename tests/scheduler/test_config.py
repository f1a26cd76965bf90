"""The scheduler's settings that take paths: absolute once parsed, since Envoy's working folder differs."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.config import parse_args


def test_the_envoy_access_log_is_off_unless_given_and_then_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_args([], env={}).envoy_access_log is None
    assert parse_args(["--envoy-access-log="], env={}).envoy_access_log is None
    assert parse_args(["--envoy-access-log=logs/a.log"], env={}).envoy_access_log == tmp_path / "logs/a.log"
    from_env = parse_args([], env={"MESHSERVE_SCHEDULER_ENVOY_ACCESS_LOG": "/var/log/envoy.log"})
    assert from_env.envoy_access_log == Path("/var/log/envoy.log")
