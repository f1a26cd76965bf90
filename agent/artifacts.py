"""Fetching a model artifact into a local folder safely, and picking its version folder.

Local paths and ``file://`` URIs are copied; any other scheme goes through the ``rclone`` CLI.
What the agent reads is bounded by a :class:`FetchPolicy`:

* a local path must resolve under one of the configured roots (``--artifact-roots``), and never
  into ``/etc``, ``/dev``, ``/proc``, ``/sys`` or the agent's own models directory;
* inside an artifact, a symlink must point to a regular file inside the same artifact, and every
  entry must be a regular file or a folder (no devices, fifos or sockets);
* a copy or download stops at ``max_bytes`` and after ``timeout_s``.

Refusals are :class:`ArtifactError`s: their message is the LOAD_FAILED reason ``model status`` shows.
Blocking file-system work runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from agent.errors import ArtifactError

MODEL_SETTINGS = "model-settings.json"
SYSTEM_FOLDERS = (Path("/etc"), Path("/dev"), Path("/proc"), Path("/sys"))
DEFAULT_MAX_BYTES = 20 * 2**30
DEFAULT_TIMEOUT_S = 1800.0
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Where local artifacts may come from, and how much and how long a fetch may take."""

    roots: tuple[Path, ...] = ()
    models_dir: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S


async def fetch_artifact(
    uri: str, dst: Path, *, policy: FetchPolicy, artifact_version: int | None = None
) -> None:
    """Place the artifact for ``uri`` (its selected version folder) at ``dst``, which must not exist."""
    deadline = time.monotonic() + policy.timeout_s
    local = local_path(uri)
    if local is not None:
        source = await asyncio.to_thread(check_local_source, uri, local, policy)
        await asyncio.to_thread(
            _copy_local, uri, source, dst, artifact_version, _Budget(uri, policy, deadline)
        )
        return
    download = dst.with_name(dst.name + ".download")
    try:
        await _rclone_copy(uri, download, policy)
        budget = _Budget(uri, policy, deadline)
        await asyncio.to_thread(_copy_local, uri, download, dst, artifact_version, budget)
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


def check_local_source(uri: str, path: Path, policy: FetchPolicy) -> Path:
    """The resolved path of a local artifact, if the policy allows reading it; else ArtifactError."""
    written = Path(os.path.normpath(path))
    resolved = path.resolve()
    for candidate in (written, resolved):
        for system in SYSTEM_FOLDERS:
            if candidate.is_relative_to(system):
                raise ArtifactError(
                    f"storageUri {uri}: {candidate} is in the system folder {system}; the agent never "
                    "reads artifacts from /etc, /dev, /proc or /sys"
                )
    if policy.models_dir is not None:
        models_dir = policy.models_dir.resolve()
        if resolved.is_relative_to(models_dir) or models_dir.is_relative_to(resolved):
            raise ArtifactError(
                f"storageUri {uri}: {resolved} overlaps the agent's own models directory {models_dir}; "
                "artifacts must come from somewhere else"
            )
    roots = tuple(root.resolve() for root in policy.roots)
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(map(str, roots)) if roots else "none are configured"
        raise ArtifactError(
            f"storageUri {uri}: {resolved} is outside the allowed artifact roots ({allowed}); add its "
            "folder to the agent's --artifact-roots (MESHSERVE_AGENT_ARTIFACT_ROOTS)"
        )
    return resolved


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


class _Budget:
    """Bytes and time left for one fetch; checked as every chunk is copied."""

    def __init__(self, uri: str, policy: FetchPolicy, deadline: float) -> None:
        self._uri = uri
        self._policy = policy
        self._deadline = deadline
        self.used = 0

    def expect(self, size: int) -> None:
        """Refuse a file whose size would exceed the limit before copying any of it."""
        if self.used + size > self._policy.max_bytes:
            self.charge(size)

    def charge(self, size: int) -> None:
        self.used += size
        if self.used > self._policy.max_bytes:
            raise ArtifactError(
                f"storageUri {self._uri}: the artifact is larger than the limit of "
                f"{self._policy.max_bytes} bytes (the agent's --artifact-max-bytes)"
            )

    def check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise ArtifactError(
                f"storageUri {self._uri}: fetching took longer than {self._policy.timeout_s:g}s "
                "(the agent's --artifact-timeout-seconds)"
            )


def _copy_local(uri: str, src: Path, dst: Path, artifact_version: int | None, budget: _Budget) -> None:
    """Copy the artifact at ``src`` (already checked against the policy) to ``dst``."""
    try:
        try:
            root = src.resolve(strict=True)
        except FileNotFoundError:
            raise ArtifactError(f"storageUri {uri}: path {src} does not exist") from None
        mode = root.stat().st_mode
        if stat.S_ISREG(mode):
            dst.mkdir(parents=True)
            _copy_file(uri, root, dst / src.name, budget, shown=src.name)
            return
        if not stat.S_ISDIR(mode):
            raise ArtifactError(f"storageUri {uri}: {src} is not a regular file or folder")
        chosen = select_version_folder(root, artifact_version).resolve()
        if not chosen.is_relative_to(root):
            raise ArtifactError(f"storageUri {uri}: version folder {chosen.name} points outside the artifact")
        _copy_tree(uri, chosen, dst, root, budget)
    except OSError as exc:
        raise ArtifactError(f"storageUri {uri}: copying {src} failed: {exc}") from exc


def _copy_tree(uri: str, src: Path, dst: Path, artifact: Path, budget: _Budget) -> None:
    dst.mkdir(parents=True)
    with os.scandir(src) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        budget.check_time()
        path = Path(entry.path)
        shown = path.relative_to(artifact)
        if entry.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(artifact):
                raise ArtifactError(
                    f"storageUri {uri}: symlink {shown} points outside the artifact (to {target}); "
                    "copy the file into the artifact instead"
                )
            if not target.exists():
                raise ArtifactError(f"storageUri {uri}: symlink {shown} points to nothing")
            if target.is_dir():
                raise ArtifactError(
                    f"storageUri {uri}: symlink {shown} names a folder; only links to files are followed"
                )
            _copy_file(uri, target, dst / entry.name, budget, shown=str(shown))
        elif entry.is_dir(follow_symlinks=False):
            _copy_tree(uri, path, dst / entry.name, artifact, budget)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(uri, path, dst / entry.name, budget, shown=str(shown))
        else:
            raise ArtifactError(
                f"storageUri {uri}: {shown} is not a regular file (a device, fifo or socket); "
                "an artifact holds only files and folders"
            )


def _copy_file(uri: str, src: Path, dst: Path, budget: _Budget, *, shown: str) -> None:
    # O_NOFOLLOW: a file swapped for a symlink after the checks is refused, not followed;
    # O_NONBLOCK: a fifo swapped in is not waited on (fstat refuses it just after).
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"storageUri {uri}: {shown} is not a regular file")
        budget.expect(info.st_size)
        with dst.open("xb") as target:
            while chunk := source.read(_CHUNK):
                budget.charge(len(chunk))
                budget.check_time()
                target.write(chunk)


async def _rclone_copy(uri: str, dst: Path, policy: FetchPolicy) -> None:
    rclone = shutil.which("rclone")
    if rclone is None:
        raise ArtifactError(f"remote storageUri {uri} needs rclone, which is not installed")
    # Arguments are passed as a list, never through a shell; "--" ends the options, so a URI that
    # starts with "-" is a path, not a flag.
    proc = await asyncio.create_subprocess_exec(
        rclone,
        "copy",
        "--create-empty-src-dirs",
        "--max-transfer",
        str(policy.max_bytes),
        "--cutoff-mode",
        "HARD",
        "--",
        uri,
        str(dst),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(policy.timeout_s):
            _, stderr = await proc.communicate()
    except TimeoutError:
        raise ArtifactError(
            f"rclone copy {uri} took longer than {policy.timeout_s:g}s "
            "(the agent's --artifact-timeout-seconds)"
        ) from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        detail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise ArtifactError(f"rclone copy {uri} failed (exit {proc.returncode}): {' '.join(detail)}")
    if not await asyncio.to_thread(_has_files, dst):
        raise ArtifactError(f"storageUri {uri}: nothing was downloaded")


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))
