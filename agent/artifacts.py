"""Fetching a model artifact into a local folder, and picking its version folder.

Local paths and ``file://`` URIs are copied; any other scheme goes through the ``rclone`` CLI.
Blocking file-system work runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.errors import ArtifactError

MODEL_SETTINGS = "model-settings.json"


async def fetch_artifact(uri: str, dst: Path, *, artifact_version: int | None = None) -> None:
    """Place the artifact for ``uri`` (its selected version folder) at ``dst``, which must not exist."""
    local = local_path(uri)
    if local is not None:
        await asyncio.to_thread(_copy_local, uri, local, dst, artifact_version)
        return
    download = dst.with_name(dst.name + ".download")
    try:
        await _rclone_copy(uri, download)
        await asyncio.to_thread(_copy_local, uri, download, dst, artifact_version)
    finally:
        await asyncio.to_thread(shutil.rmtree, download, True)


def local_path(uri: str) -> Path | None:
    """The local path a URI names, or None for a remote URI (handled by rclone)."""
    if uri.startswith("/"):
        return Path(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"storageUri {uri}: file URIs must not name a host")
        return Path(unquote(parsed.path))
    if not parsed.scheme:
        raise ArtifactError(f"storageUri {uri!r} must be an absolute path or a URI such as file:///models/x")
    return None


def select_version_folder(root: Path, artifact_version: int | None) -> Path:
    """Pick the folder to serve inside a downloaded artifact (MLServer's model-repository rules).

    1. ``model-settings.json`` at the root wins, whatever version was asked for;
    2. a requested version must exist as a numeric sub-folder holding ``model-settings.json``;
    3. otherwise the highest such numeric sub-folder;
    4. otherwise the root itself.
    """
    if (root / MODEL_SETTINGS).is_file():
        return root
    candidates = [
        (int(child.name), child)
        for child in sorted(root.iterdir())
        if child.is_dir() and child.name.isdigit() and (child / MODEL_SETTINGS).is_file()
    ]
    if artifact_version is not None:
        matches = [child for number, child in candidates if number == artifact_version]
        if len(matches) > 1:
            raise ArtifactError(f"artifact version {artifact_version} matches several folders in {root}")
        if not matches:
            raise ArtifactError(
                f"artifact version {artifact_version} not found: no folder {artifact_version}/ "
                f"with {MODEL_SETTINGS} in the artifact"
            )
        return matches[0]
    if candidates:
        return max(candidates, key=lambda candidate: candidate[0])[1]
    return root


def _copy_local(uri: str, src: Path, dst: Path, artifact_version: int | None) -> None:
    try:
        if src.is_file():
            dst.mkdir(parents=True)
            shutil.copy2(src, dst / src.name)
            return
        if not src.is_dir():
            raise ArtifactError(f"storageUri {uri}: path {src} does not exist")
        shutil.copytree(select_version_folder(src, artifact_version), dst)
    except OSError as exc:
        raise ArtifactError(f"storageUri {uri}: copying {src} failed: {exc}") from exc


async def _rclone_copy(uri: str, dst: Path) -> None:
    rclone = shutil.which("rclone")
    if rclone is None:
        raise ArtifactError(f"remote storageUri {uri} needs rclone, which is not installed")
    # Arguments are passed as a list, never through a shell.
    proc = await asyncio.create_subprocess_exec(
        rclone,
        "copy",
        "--create-empty-src-dirs",
        uri,
        str(dst),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await proc.communicate()
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ArtifactError(f"rclone copy {uri} failed (exit {proc.returncode}): {' '.join(detail)}")
    if not await asyncio.to_thread(_has_files, dst):
        raise ArtifactError(f"storageUri {uri}: nothing was downloaded")


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))
