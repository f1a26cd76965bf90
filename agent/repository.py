"""The agent's side of MLServer's model repository: one folder per versioned model.

Layout under the models dir:

* ``<model>_<version>/`` - what MLServer loads (artifact + model-settings.json);
* ``<model>_<version>/.meshserve-model.pb`` - the ModelVersion the agent loaded it for, written after
  a successful load, so a restarted agent can adopt the model instead of reloading it;
* ``.staging/`` - work area; hidden names are skipped by MLServer's ``**`` scan, and a finished
  folder is moved into place with one rename.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.message import DecodeError

from agent.artifacts import fetch_artifact
from agent.errors import ArtifactError
from agent.settings import write_model_settings
from agent.state import versioned_name
from apis.mlops.agent import agent_pb2

MARKER = ".meshserve-model.pb"
STAGING = ".staging"


class LocalRepository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str) -> Path:
        return self.root / name

    async def prepare(self, model_version: agent_pb2.ModelVersion) -> Path:
        """Fetch the artifact and write its settings; returns the folder MLServer will load."""
        name = versioned_name(model_version)
        spec = model_version.model.modelSpec
        staging = self.root / STAGING / name
        final = self.folder(name)
        await asyncio.to_thread(_reset, staging, final)
        try:
            artifact_version = spec.artifactVersion if spec.HasField("artifactVersion") else None
            await fetch_artifact(spec.uri, staging, artifact_version=artifact_version)
            extra: Mapping[str, str] = {parameter.name: parameter.value for parameter in spec.parameters}
            await asyncio.to_thread(
                write_model_settings,
                staging,
                versioned_name=name,
                version=model_version.version,
                requirements=list(spec.requirements),
                extra=extra,
            )
            await asyncio.to_thread(staging.rename, final)
        except OSError as exc:
            raise ArtifactError(f"preparing {final} failed: {exc}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return final

    async def remove(self, name: str) -> None:
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
            return sorted(path.name for path in self.root.iterdir())

        return await asyncio.to_thread(scan)

    async def remove_entry(self, name: str) -> None:
        def remove() -> None:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)


def _reset(staging: Path, final: Path) -> None:
    """Clear leftovers of an earlier attempt for the same model."""
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
