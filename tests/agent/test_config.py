from __future__ import annotations

from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.config import parse_config


def test_defaults(tmp_path: Path) -> None:
    config = parse_config(["--models-dir", str(tmp_path)], env={})
    assert config.server_name == "mlserver"
    assert config.replica_idx == 0
    assert config.scheduler_address == "127.0.0.1:9005"
    assert config.mlserver_url == "http://127.0.0.1:8080"
    assert config.inference_grpc_port == 9500
    assert config.memory_bytes == 1_000_000_000
    assert config.capabilities == ("mlserver", "sklearn", "xgboost", "lightgbm", "python")
    assert config.overcommit_percentage == 0
    assert config.unload_grace_seconds == 2.0
    assert config.startup_timeout_seconds == 120.0
    assert config.parallel_workers == 1
    assert not config.simulate
    assert config.log_level == "info"


def test_env_fallbacks_and_flags_win(tmp_path: Path) -> None:
    env = {
        "MESHSERVE_AGENT_SERVER_NAME": "from-env",
        "MESHSERVE_AGENT_REPLICA_IDX": "3",
        "MESHSERVE_AGENT_MODELS_DIR": str(tmp_path),
        "MESHSERVE_AGENT_SIMULATE": "true",
        "MESHSERVE_AGENT_LOG_LEVEL": "debug",
        "MLSERVER_PARALLEL_WORKERS": "0",
    }
    config = parse_config(["--replica-idx", "5", "--capabilities", " sklearn , python ,"], env=env)
    assert config.server_name == "from-env"
    assert config.replica_idx == 5
    assert config.models_dir == tmp_path.resolve()
    assert config.capabilities == ("sklearn", "python")
    assert config.simulate
    assert config.log_level == "debug"
    assert config.parallel_workers == 0


def test_other_processes_variables_mean_nothing_to_the_agent(tmp_path: Path) -> None:
    # The scheduler's API port and the CLI's Envoy address once shared these names with the agent.
    env = {"MESHSERVE_SCHEDULER_PORT": "9004", "MESHSERVE_INFERENCE_HOST": "envoy.example"}
    config = parse_config(["--models-dir", str(tmp_path)], env=env)
    assert (config.scheduler_port, config.inference_host) == (9005, "127.0.0.1")
    env = {"MESHSERVE_AGENT_SCHEDULER_PORT": "19005", "MESHSERVE_AGENT_INFERENCE_HOST": "10.0.0.7"}
    config = parse_config(["--models-dir", str(tmp_path)], env=env)
    assert (config.scheduler_port, config.mlserver_url) == (19005, "http://10.0.0.7:8080")


def test_models_dir_is_required_unless_simulating(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={})
    assert "required: --models-dir" in capsys.readouterr().err
    assert parse_config(["--simulate"], env={}).simulate


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--replica-idx", "-1"], {}, "argument --replica-idx: -1 is negative"),
        (["--server-name", "Bad_Name"], {}, "server name 'Bad_Name' is invalid"),
        (["--capabilities", "ok,bad tag"], {}, "capability 'bad tag' is invalid"),
        (["--log-level", "loud"], {}, "--log-level must be one of"),
        ([], {"MESHSERVE_AGENT_MEMORY_BYTES": "lots"}, "MESHSERVE_AGENT_MEMORY_BYTES='lots'"),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str], env: dict[str, str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_config(["--models-dir", str(tmp_path), *argv], env=env)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.2, max_s=5.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.2)


def test_backoff_jitter_stays_in_bounds() -> None:
    backoff = Backoff(initial_s=1.0, max_s=5.0, jitter=0.2)
    assert 0.8 <= backoff.next_delay() <= 1.2
