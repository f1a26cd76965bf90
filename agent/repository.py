"""The agent's side of MLServer's model repository: one folder per versioned model.

Layout under the models dir:

* ``<model>_<version>/`` - what MLServer loads (artifact + model-settings.json);
* ``<model>_<version>/.meshserve-model.pb`` - the ModelVersion the agent loaded it for, written after
  a successful load, so a restarted agent can adopt the model instead of reloading it;
* ``.staging/`` - work area; hidden names are skipped by MLServer's ``**`` scan, and a finished
  folder is moved into place with one rename;
* ``.meshserve-agent`` - says the folder is the agent's own. :meth:`LocalRepository.claim` writes it
  into an empty (or new) folder; the agent deletes nothing from a folder without it, so a
  ``--models-dir`` pointed at the wrong place (a home folder, ``/``) loses no file.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.message import DecodeError

from agent.artifacts import FetchPolicy, fetch_artifact
from agent.errors import AgentError, ArtifactError
from agent.settings import callback_extra, write_model_settings
from agent.state import versioned_name
from apis.mlops.agent import agent_pb2

MARKER = ".meshserve-model.pb"
STAGING = ".staging"
OWNER_MARKER = ".meshserve-agent"


class NotOwned(AgentError):
    """The models directory is not the agent's: it deletes nothing there."""


class LocalRepository:
    """The models dir: claims it, prepares each model version's folder (staged, then moved into
    place), keeps the marker a restarted agent adopts from, and lists and removes folders (the
    layout is in the module docstring)."""

    def __init__(
        self, root: Path, *, policy: FetchPolicy | None = None, envoy_url: str = "http://127.0.0.1:9000"
    ) -> None:
        self.root = root
        self._envoy_url = envoy_url  # where explainers and LLMs send their own requests
        self._policy = policy if policy is not None else FetchPolicy(models_dir=root)
        self._owned = False

    async def claim(self) -> None:
        """Make sure the models dir is the agent's own before anything in it is deleted.

        A missing or empty folder is created and marked; a marked one is used as it is; a non-empty
        folder whose every entry is the agent's (model folders with their marker, staging) is marked
        too (folders from before the marker existed). Anything else raises :class:`NotOwned`.
        """
        await asyncio.to_thread(self._claim)
        self._owned = True

    def _claim(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        owner = self.root / OWNER_MARKER
        if owner.is_file() and not owner.is_symlink():
            return
        strangers = [entry.name for entry in self.root.iterdir() if not _is_agents(entry)]
        if strangers:
            shown = ", ".join(sorted(strangers)[:5]) + (", ..." if len(strangers) > 5 else "")
            raise NotOwned(
                f"models directory {self.root} is not empty ({shown}) and has no {OWNER_MARKER} file, so "
                "it is not this agent's: refusing to delete anything in it. Point --models-dir at an "
                f"empty folder (the agent marks it as its own), or empty this one"
            )
        owner.write_text("This folder is a meshserve agent's model repository; it deletes what is in it.\n")

    def _require_owned(self) -> None:
        if not self._owned:
            raise NotOwned(f"models directory {self.root} has not been claimed; refusing to delete in it")

    def folder(self, name: str) -> Path:
        return self.root / name

    async def prepare(self, model_version: agent_pb2.ModelVersion) -> Path:
        """Fetch the artifact and write its settings; returns the folder MLServer will load."""
        name = versioned_name(model_version)
        spec = model_version.model.modelSpec
        staging = self.root / STAGING / name
        final = self.folder(name)
        self._require_owned()
        await asyncio.to_thread(_reset, staging, final)
        try:
            artifact_version = spec.artifactVersion if spec.HasField("artifactVersion") else None
            await fetch_artifact(spec.uri, staging, policy=self._policy, artifact_version=artifact_version)
            extra: Mapping[str, str] = {parameter.name: parameter.value for parameter in spec.parameters}
            callback = callback_extra(spec, self._envoy_url)
            await asyncio.to_thread(
                write_model_settings,
                staging,
                versioned_name=name,
                version=model_version.version,
                requirements=list(spec.requirements),
                extra={**extra, **callback},
                callback=bool(callback),
            )
            await asyncio.to_thread(staging.rename, final)
        except OSError as exc:
            raise ArtifactError(f"preparing {final} failed: {exc}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return final

    async def remove(self, name: str) -> None:
        self._require_owned()
        await asyncio.to_thread(shutil.rmtree, self.folder(name), True)

    async def save_marker(self, model_version: agent_pb2.ModelVersion) -> None:
        path = self.folder(versioned_name(model_version)) / MARKER
        await asyncio.to_thread(path.write_bytes, model_version.SerializeToString())

    async def read_marker(self, name: str) -> agent_pb2.ModelVersion | None:
        """The ModelVersion saved for ``name``, or None when absent, unreadable or for another name."""
        path = self.folder(name) / MARKER
        try:
            data = await asyncio.to_thread(path.read_bytes)
            model_version = agent_pb2.ModelVersion.FromString(data)
        except (OSError, DecodeError):
            return None
        return model_version if versioned_name(model_version) == name else None

    async def folders(self) -> list[str]:
        """Names of the entries in the models dir, hidden ones (staging) included."""

        def scan() -> list[str]:
            self.root.mkdir(parents=True, exist_ok=True)
            return sorted(path.name for path in self.root.iterdir() if path.name != OWNER_MARKER)

        return await asyncio.to_thread(scan)

    async def remove_entry(self, name: str) -> None:
        self._require_owned()

        def remove() -> None:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)


def _is_agents(entry: Path) -> bool:
    """An entry the agent itself leaves in its models dir."""
    if entry.is_symlink():
        return False
    if entry.name == STAGING:
        return entry.is_dir()
    return entry.is_dir() and (entry / MARKER).is_file()


def _reset(staging: Path, final: Path) -> None:
    """Clear leftovers of an earlier attempt for the same model."""
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
