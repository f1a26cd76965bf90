from __future__ import annotations

from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.config import parse_config


def test_defaults(tmp_path: Path) -> None:
    config, level = parse_config(["--models-dir", str(tmp_path)], env={})
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
    assert level == "info"


def test_env_fallbacks_and_flags_win(tmp_path: Path) -> None:
    env = {
        "MESHSERVE_SERVER_NAME": "from-env",
        "MESHSERVE_REPLICA_IDX": "3",
        "MESHSERVE_MODELS_DIR": str(tmp_path),
        "MLSERVER_PARALLEL_WORKERS": "0",
    }
    config, _ = parse_config(["--replica-idx", "5", "--capabilities", " sklearn , python ,"], env=env)
    assert config.server_name == "from-env"
    assert config.replica_idx == 5
    assert config.models_dir == tmp_path.resolve()
    assert config.capabilities == ("sklearn", "python")
    assert config.parallel_workers == 0


def test_models_dir_is_required() -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={})


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.2, max_s=5.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.2)


def test_backoff_jitter_stays_in_bounds() -> None:
    backoff = Backoff(initial_s=1.0, max_s=5.0, jitter=0.2)
    assert 0.8 <= backoff.next_delay() <= 1.2
