"""Artifacts are fetched safely: every refusal with real files, links, a fifo and a fake rclone."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import structlog

from agent.artifacts import MODEL_SETTINGS, FetchPolicy, fetch_artifact
from agent.config import parse_config
from agent.errors import ArtifactError
from agent.mlserver import MLServerClient
from agent.operations import Event, ModelOperator
from agent.repository import MARKER, OWNER_MARKER, LocalRepository, NotOwned
from agent.state import ReplicaState
from tests.agent.agent_protos import model_version


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    """An allowed root holding an artifact folder ``iris`` (model file + settings)."""
    root = tmp_path / "root"
    (root / "iris").mkdir(parents=True)
    (root / "iris" / "model.joblib").write_bytes(b"model")
    (root / "iris" / MODEL_SETTINGS).write_text("{}")
    return root


def policy(root: Path, **changes: object) -> FetchPolicy:
    values: dict[str, object] = {"roots": (root,), "models_dir": root.parent / "models"}
    values.update(changes)
    return FetchPolicy(**values)  # type: ignore[arg-type]


async def refused(uri: str, dst: Path, fetch_policy: FetchPolicy) -> str:
    with pytest.raises(ArtifactError) as caught:
        async with asyncio.timeout(10):  # a fifo or /dev/zero must not hang the fetch
            await fetch_artifact(uri, dst, policy=fetch_policy)
    return str(caught.value)


async def test_allowed_artifact_is_copied(roots: Path, tmp_path: Path) -> None:
    await fetch_artifact(f"file://{roots / 'iris'}", tmp_path / "dst", policy=policy(roots))
    assert (tmp_path / "dst" / "model.joblib").read_bytes() == b"model"


@pytest.mark.parametrize(
    "uri", ["/etc", "file:///etc/passwd", "file:///dev", "/dev/zero", "/proc/self", "/sys"]
)
async def test_system_folders_are_refused_even_under_a_root_of_slash(uri: str, tmp_path: Path) -> None:
    message = await refused(uri, tmp_path / "dst", FetchPolicy(roots=(Path("/"),)))
    assert "system folder" in message and uri in message


async def test_dotdot_into_a_system_folder_is_refused(roots: Path, tmp_path: Path) -> None:
    message = await refused(
        f"{roots}/../../../../../../etc", tmp_path / "dst", FetchPolicy(roots=(Path("/"),))
    )
    assert "system folder /etc" in message


async def test_path_outside_the_roots_is_refused_naming_the_setting(roots: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.joblib").write_bytes(b"x")
    message = await refused(str(outside), tmp_path / "dst", policy(roots))
    assert "outside the allowed artifact roots" in message and "--artifact-roots" in message


async def test_no_roots_configured_refuses_every_local_path(roots: Path, tmp_path: Path) -> None:
    message = await refused(str(roots / "iris"), tmp_path / "dst", FetchPolicy())
    assert "none are configured" in message


async def test_a_symlinked_storage_uri_is_judged_by_its_target(roots: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    (roots / "innocent").symlink_to(outside)
    message = await refused(str(roots / "innocent"), tmp_path / "dst", policy(roots))
    assert "outside the allowed artifact roots" in message


async def test_the_agents_own_models_dir_and_its_ancestors_are_refused(roots: Path, tmp_path: Path) -> None:
    models = roots / "models"
    (models / "iris_1").mkdir(parents=True)
    (models / "iris_1" / "model.joblib").write_bytes(b"x")
    own = policy(roots, models_dir=models)
    assert "models directory" in await refused(str(models / "iris_1"), tmp_path / "a", own)
    assert "models directory" in await refused(str(roots), tmp_path / "b", own)


async def test_symlink_to_dev_zero_in_an_artifact_is_refused(roots: Path, tmp_path: Path) -> None:
    (roots / "iris" / "weights.bin").symlink_to("/dev/zero")
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots))
    assert "symlink weights.bin points outside the artifact (to /dev/zero)" in message


async def test_symlink_to_a_file_outside_the_artifact_is_refused(roots: Path, tmp_path: Path) -> None:
    (roots / "other.txt").write_text("another artifact's file, still under the root")
    (roots / "iris" / "sub").mkdir()
    (roots / "iris" / "sub" / "link").symlink_to(roots / "other.txt")
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots))
    assert "symlink sub/link points outside the artifact" in message


async def test_symlink_to_a_file_inside_the_artifact_is_copied_as_a_file(roots: Path, tmp_path: Path) -> None:
    (roots / "iris" / "alias.joblib").symlink_to("model.joblib")
    await fetch_artifact(str(roots / "iris"), tmp_path / "dst", policy=policy(roots))
    copied = tmp_path / "dst" / "alias.joblib"
    assert not copied.is_symlink() and copied.read_bytes() == b"model"


async def test_symlinked_folder_is_refused(roots: Path, tmp_path: Path) -> None:
    (roots / "iris" / "data").mkdir()
    (roots / "iris" / "loop").symlink_to(roots / "iris")
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots))
    assert "names a folder" in message


async def test_fifo_in_an_artifact_is_refused_without_blocking(roots: Path, tmp_path: Path) -> None:
    os.mkfifo(roots / "iris" / "pipe")
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots))
    assert "pipe is not a regular file" in message


async def test_fifo_as_the_storage_uri_is_refused(roots: Path, tmp_path: Path) -> None:
    os.mkfifo(roots / "pipe")
    message = await refused(str(roots / "pipe"), tmp_path / "dst", policy(roots))
    assert "not a regular file or folder" in message


async def test_byte_limit_stops_a_big_file(roots: Path, tmp_path: Path) -> None:
    (roots / "iris" / "big.bin").write_bytes(b"x" * 10_000)
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots, max_bytes=5_000))
    assert "larger than the limit of 5000 bytes" in message and "--artifact-max-bytes" in message


async def test_byte_limit_counts_the_whole_artifact(roots: Path, tmp_path: Path) -> None:
    for i in range(5):
        (roots / "iris" / f"part{i}.bin").write_bytes(b"x" * 1_000)
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots, max_bytes=3_500))
    assert "larger than the limit" in message


async def test_copy_timeout(roots: Path, tmp_path: Path) -> None:
    message = await refused(str(roots / "iris"), tmp_path / "dst", policy(roots, timeout_s=1e-9))
    assert "took longer than" in message and "--artifact-timeout-seconds" in message


# -- rclone: a fake script on PATH -----------------------------------------------------------------


def on_path(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def fake_rclone(folder: Path, body: str) -> Path:
    folder.mkdir(exist_ok=True)
    script = folder / "rclone"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {folder / 'argv'}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


async def test_rclone_gets_a_byte_limit_and_double_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fake copies one file into the destination (its last argument).
    bin_dir = fake_rclone(
        tmp_path / "bin", 'for last; do :; done; mkdir -p "$last"; echo m > "$last/model.joblib"'
    )
    on_path(monkeypatch, bin_dir)
    await fetch_artifact("gs://bucket/iris", tmp_path / "dst", policy=FetchPolicy(max_bytes=1234))
    argv = (bin_dir / "argv").read_text().splitlines()
    assert argv[:1] == ["copy"]
    assert argv[argv.index("--max-transfer") + 1] == "1234"
    assert argv[-3:] == ["--", "gs://bucket/iris", str(tmp_path / "dst.download")]
    assert (tmp_path / "dst" / "model.joblib").read_text() == "m\n"


async def test_slow_rclone_is_stopped_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path(monkeypatch, fake_rclone(tmp_path / "bin", "exec sleep 30"))
    started = asyncio.get_running_loop().time()
    message = await refused("gs://bucket/iris", tmp_path / "dst", FetchPolicy(timeout_s=0.5))
    assert "took longer than 0.5s" in message
    assert asyncio.get_running_loop().time() - started < 5
    assert not (tmp_path / "dst.download").exists()


async def test_rclone_download_over_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even an rclone that ignores --max-transfer cannot bring in more than the limit.
    body = 'for last; do :; done; mkdir -p "$last"; head -c 5000 /dev/zero > "$last/big.bin"'
    on_path(monkeypatch, fake_rclone(tmp_path / "bin", body))
    message = await refused("gs://bucket/iris", tmp_path / "dst", FetchPolicy(max_bytes=1000))
    assert "larger than the limit" in message


# -- the load reports the refusal; the models dir marker ---------------------------------------------


def operator_for(models: Path, fetch_policy: FetchPolicy) -> ModelOperator:
    return ModelOperator(
        mlserver=MLServerClient("http://127.0.0.1:1"),  # never reached: the fetch fails first
        repository=LocalRepository(models, policy=fetch_policy),
        state=ReplicaState(memory_bytes=1000, overcommit_percentage=0),
        logger=structlog.get_logger(),
    )


async def test_refused_artifact_is_a_load_failed_with_the_reason(roots: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    operator = operator_for(models, policy(roots, models_dir=models))
    await operator._repository.claim()
    outcome = await operator.load(model_version("iris", 1, "file:///etc"))
    assert outcome.event == Event.LOAD_FAILED
    assert "system folder /etc" in outcome.message
    assert not (models / "iris_1").exists()


async def test_claim_marks_an_empty_models_dir(tmp_path: Path) -> None:
    models = tmp_path / "models"
    await LocalRepository(models).claim()
    assert (models / OWNER_MARKER).is_file()
    models2 = tmp_path / "empty"
    models2.mkdir()
    repository = LocalRepository(models2)
    await repository.claim()
    assert (models2 / OWNER_MARKER).is_file()
    assert await repository.folders() == []  # the marker is not a model folder to clean


async def test_foreign_folder_is_never_cleaned(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    (home / "photos").mkdir()
    operator = operator_for(home, FetchPolicy(models_dir=home))
    with pytest.raises(NotOwned, match=r"not empty .* no \.meshserve-agent file"):
        await operator.adopt_or_clean()
    assert (home / "thesis.tex").read_text() == "years of work"
    assert (home / "photos").is_dir()
    assert not (home / OWNER_MARKER).exists()
    with pytest.raises(NotOwned):
        await operator._repository.remove_entry("photos")
    with pytest.raises(NotOwned):
        await operator._repository.remove("photos")
    assert (home / "photos").is_dir()


async def test_folder_holding_only_agent_entries_is_claimed(tmp_path: Path) -> None:
    # A models dir from before the marker existed: model folders with their marker, staging.
    models = tmp_path / "models"
    (models / "iris_1").mkdir(parents=True)
    (models / "iris_1" / MARKER).write_bytes(b"")
    (models / ".staging").mkdir()
    await LocalRepository(models).claim()
    assert (models / OWNER_MARKER).is_file()


async def test_marked_folder_is_cleaned_of_strays(tmp_path: Path) -> None:
    models = tmp_path / "models"
    repository = LocalRepository(models)
    await repository.claim()
    (models / "stray_1").mkdir()
    await repository.remove_entry("stray_1")
    assert not (models / "stray_1").exists()
    assert (models / OWNER_MARKER).is_file()


def test_artifact_settings_parse(tmp_path: Path) -> None:
    config = parse_config(
        ["--models-dir", str(tmp_path), "--artifact-roots", f"{tmp_path}/a, {tmp_path}/b,"],
        env={"MESHSERVE_AGENT_ARTIFACT_MAX_BYTES": "1000", "MESHSERVE_AGENT_ARTIFACT_TIMEOUT_SECONDS": "9"},
    )
    assert config.artifact_roots == (tmp_path / "a", tmp_path / "b")
    fetch = config.fetch_policy
    assert (fetch.max_bytes, fetch.timeout_s, fetch.models_dir) == (1000, 9.0, tmp_path.resolve())
    default = parse_config(["--models-dir", str(tmp_path)], env={})
    assert default.artifact_roots == () and default.watch_interval_seconds == 2.0


def test_relative_artifact_root_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--models-dir", str(tmp_path), "--artifact-roots", "samples"], env={})
    assert "must be an absolute path" in capsys.readouterr().err
