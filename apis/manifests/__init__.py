"""Seldon ``Model``, ``Server``, ``Experiment`` and ``Pipeline`` manifests (``mlops.seldon.io/v1alpha1``)
to scheduler requests.

A contract shared by the CLI (``model load -f``, ``server load -f``, ``experiment start -f``,
``pipeline load -f``) and the local stack (its demo model): the YAML users write, as Seldon's CRDs
define it, read one way. Everything in a file is parsed and validated before the caller sends
anything, so a bad third document never leaves the first two loaded. Errors:
:class:`ManifestFileError` names the file and document; inside it, :class:`ManifestError` or
``InvalidResource`` names the field. One module per kind; everything public is re-exported here.
"""

from __future__ import annotations

from apis.manifests._common import API_VERSION, ManifestError, ManifestFileError
from apis.manifests.experiment import (
    EXPERIMENT_KIND,
    ExperimentCheck,
    experiment_request,
    parse_experiment_requests,
    read_experiment_requests,
)
from apis.manifests.model import (
    KIND,
    model_request,
    parse_model_requests,
    read_model_requests,
    resolve_storage_uri,
)
from apis.manifests.pipeline import (
    PIPELINE_KIND,
    PipelineCheck,
    parse_pipeline_requests,
    pipeline_request,
    read_pipeline_requests,
)
from apis.manifests.server import (
    SERVER_CONFIGS,
    SERVER_KIND,
    ServerManifest,
    read_server_manifests,
    server_manifest,
)

__all__ = [
    "API_VERSION",
    "EXPERIMENT_KIND",
    "KIND",
    "PIPELINE_KIND",
    "SERVER_CONFIGS",
    "SERVER_KIND",
    "ExperimentCheck",
    "ManifestError",
    "ManifestFileError",
    "PipelineCheck",
    "ServerManifest",
    "experiment_request",
    "model_request",
    "parse_experiment_requests",
    "parse_model_requests",
    "parse_pipeline_requests",
    "pipeline_request",
    "read_experiment_requests",
    "read_model_requests",
    "read_pipeline_requests",
    "read_server_manifests",
    "resolve_storage_uri",
    "server_manifest",
]
