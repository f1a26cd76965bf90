from __future__ import annotations

from pathlib import Path

import pytest

from agent.artifacts import MODEL_SETTINGS, FetchPolicy, fetch_artifact, local_path, select_version_folder
from agent.errors import ArtifactError


def make_version(root: Path, name: str, *, settings: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"x")
    if settings:
        (folder / MODEL_SETTINGS).write_text("{}")
    return folder


def test_root_settings_win_over_requested_version(tmp_path: Path) -> None:
    (tmp_path / MODEL_SETTINGS).write_text("{}")
    make_version(tmp_path, "2")
    assert select_version_folder(tmp_path, 2) == tmp_path


def test_requested_version_folder(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    two = make_version(tmp_path, "2")
    make_version(tmp_path, "3")
    assert select_version_folder(tmp_path, 2) == two


def test_requested_version_missing_is_an_error(tmp_path: Path) -> None:
    make_version(tmp_path, "1")
    make_version(tmp_path, "2", settings=False)
    with pytest.raises(ArtifactError, match="artifact version 2 not found"):
        select_version_folder(tmp_path, 2)


def test_requested_version_without_any_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="artifact version 1 not found"):
        select_version_folder(tmp_path, 1)


def test_highest_numeric_folder_with_settings(tmp_path: Path) -> None:
    make_version(tmp_path, "2")
    ten = make_version(tmp_path, "10")
    make_version(tmp_path, "11", settings=False)
    make_version(tmp_path, "latest")
    assert select_version_folder(tmp_path, None) == ten


def test_root_when_no_version_folder(tmp_path: Path) -> None:
    (tmp_path / "model.joblib").write_bytes(b"x")
    make_version(tmp_path, "1", settings=False)
    assert select_version_folder(tmp_path, None) == tmp_path


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/models/iris", Path("/models/iris")),
        ("file:///models/iris", Path("/models/iris")),
        ("file:///models/my%20iris", Path("/models/my iris")),
        ("gs://bucket/iris", None),
        ("s3://bucket/iris", None),
    ],
)
def test_local_path(uri: str, expected: Path | None) -> None:
    assert local_path(uri) == expected


def test_relative_path_is_rejected() -> None:
    with pytest.raises(ArtifactError, match="absolute path"):
        local_path("models/iris")


async def test_fetch_directory_copies_selected_version(tmp_path: Path) -> None:
    source = tmp_path / "src"
    make_version(source, "1")
    make_version(source, "2")
    (source / "2" / "extra.txt").write_text("hello")
    dst = tmp_path / "dst"
    await fetch_artifact(f"file://{source}", dst, policy=FetchPolicy(roots=(tmp_path,)))
    assert sorted(path.name for path in dst.iterdir()) == ["extra.txt", MODEL_SETTINGS, "model.joblib"]


async def test_fetch_single_file(tmp_path: Path) -> None:
    source = tmp_path / "model.joblib"
    source.write_bytes(b"model")
    dst = tmp_path / "dst"
    await fetch_artifact(str(source), dst, policy=FetchPolicy(roots=(tmp_path,)))
    assert (dst / "model.joblib").read_bytes() == b"model"


async def test_fetch_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        await fetch_artifact(str(tmp_path / "nope"), tmp_path / "dst", policy=FetchPolicy(roots=(tmp_path,)))
    assert not (tmp_path / "dst").exists()


async def test_fetch_remote_without_rclone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ArtifactError) as info:
        await fetch_artifact("gs://seldon-models/iris", tmp_path / "dst", policy=FetchPolicy())
    assert str(info.value) == "remote storageUri gs://seldon-models/iris needs rclone, which is not installed"
