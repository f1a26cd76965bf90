"""Manifests and names given on the command line, with their errors turned into CliError.

The parsing itself is the shared contract in ``apis.manifests`` (the local stack reads its demo
model with it too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from apis import manifests
from apis.manifests import ManifestError, ServerManifest, resolve_storage_uri, server_manifest
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource, validate_name
from cli.errors import CliError
from experiments.model import Experiment
from pipelines.model import Pipeline

__all__ = [
    "ManifestError",
    "ServerManifest",
    "checked_name",
    "parse_model_requests",
    "read_experiment_requests",
    "read_model_requests",
    "read_pipeline_requests",
    "read_server_manifests",
    "resolve_storage_uri",
    "server_manifest",
]

T = TypeVar("T")


def checked_name(name: str, *, kind: str = "model") -> str:
    """A name given on the command line, validated before anything is sent."""
    try:
        return validate_name(name, kind=kind)
    except InvalidResource as exc:
        raise CliError(str(exc)) from exc


def read_model_requests(path: str) -> list[scheduler_pb2.LoadModelRequest]:
    """Every Model document in ``path``; CliError naming the file and document."""
    return _cli_error(lambda: manifests.read_model_requests(path))


def parse_model_requests(text: str, *, source: str, base_dir: str) -> list[scheduler_pb2.LoadModelRequest]:
    return _cli_error(lambda: manifests.parse_model_requests(text, source=source, base_dir=base_dir))


def read_server_manifests(path: str) -> list[ServerManifest]:
    """Every Server document in ``path``; CliError naming the file and document."""
    return _cli_error(lambda: manifests.read_server_manifests(path))


def read_experiment_requests(path: str) -> list[scheduler_pb2.StartExperimentRequest]:
    """Every Experiment document in ``path``, each checked by the experiment model the scheduler
    applies (default among the candidates, weights, mirror), so nothing is sent if one is wrong."""
    return _cli_error(lambda: manifests.read_experiment_requests(path, check=Experiment.from_proto))


def read_pipeline_requests(path: str) -> list[scheduler_pb2.LoadPipelineRequest]:
    """Every Pipeline document in ``path``, each checked by the pipeline model the scheduler applies
    (references, cycles, bounds), so nothing is sent if one is wrong."""
    return _cli_error(lambda: manifests.read_pipeline_requests(path, check=Pipeline.from_proto))


def _cli_error(parse: Callable[[], T]) -> T:
    try:
        return parse()
    except manifests.ManifestFileError as exc:
        raise CliError(str(exc)) from exc
