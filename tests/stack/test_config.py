from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from apis import settings
from stack.commands import config_from
from stack.config import ENV_PREFIX, StackConfig, port_defaults


def up_args(argv: list[str], env: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home")
    settings.add_flags(parser, StackConfig, prefix=ENV_PREFIX, env=env)
    return parser.parse_args(argv)


def test_up_flags_derive_from_the_stack_config(tmp_path: Path) -> None:
    env = {"MESHSERVE_STACK_HTTP_PORT": "19000", "MESHSERVE_STACK_CAPABILITIES": "sklearn"}
    args = up_args(["--home", str(tmp_path), "--scheduler-port", "19004", "--log-level", "debug"], env)
    config = config_from(args)
    assert (config.home, config.http_port, config.scheduler_port) == (tmp_path.resolve(), 19000, 19004)
    assert (config.capabilities, config.log_level, config.agent_port) == ("sklearn", "debug", 9005)
    assert set(port_defaults()) <= set(vars(args))
    assert "home" in vars(args) and "host" not in vars(args)  # home is --home; host stays loopback


def test_saved_config_round_trips_and_tolerates_unknown_settings(tmp_path: Path) -> None:
    StackConfig(home=tmp_path, http_port=19000).save()
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "retired_setting": 1}))
    assert StackConfig.load(tmp_path) == StackConfig(home=tmp_path, http_port=19000)


def test_load_without_a_saved_config_uses_the_defaults(tmp_path: Path) -> None:
    assert StackConfig.load(tmp_path / "nowhere") == StackConfig(home=tmp_path / "nowhere")


def test_up_turns_model_autoscaling_on_only_when_enabled(tmp_path: Path) -> None:
    from scheduler.config import parse_args as scheduler_args
    from stack.components import components

    def scheduler_argv(config: StackConfig) -> list[str]:
        planned = {c.name: c for c in components(config)}
        return list(planned["scheduler"].argv[3:])  # after python -m scheduler

    off = config_from(up_args(["--home", str(tmp_path), "--model-scale-up-seconds", "2"], {}))
    assert "--enable-model-autoscaling" not in scheduler_argv(off)
    parsed_off = scheduler_args(scheduler_argv(off), env={})
    assert parsed_off.enable_model_autoscaling is False
    assert parsed_off.model_scale_up_seconds == 2.0  # inert while off (scenario 43's test uses it)
    argv = ["--home", str(tmp_path), "--enable-model-autoscaling", "--model-idle-seconds", "5"]
    on = config_from(up_args(argv, {"MESHSERVE_STACK_MODEL_LAG_THRESHOLD": "4"}))
    parsed = scheduler_args(scheduler_argv(on), env={})
    assert parsed.enable_model_autoscaling is True
    assert (parsed.model_lag_threshold, parsed.model_idle_seconds) == (4, 5.0)
    assert (parsed.model_scale_up_seconds, parsed.model_scaling_cooldown_seconds) == (20.0, 60.0)


def test_up_refuses_out_of_bounds_autoscaling_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        up_args(["--model-lag-threshold", "0"], {})
    assert "--model-lag-threshold: 0 is not within 1..100000" in capsys.readouterr().err
