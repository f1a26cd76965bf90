"""MLServer model-settings.json: generated from the model's requirements when absent, then rewritten
so MLServer serves the model under its versioned name, as Seldon's agent does."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.artifacts import MODEL_SETTINGS
from agent.errors import ModelSettingsError
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource, validate_name

Settings = dict[str, Any]

# `class Foo(MLModel):` or `class Foo(mlserver.MLModel):` at the start of a line.
_MLMODEL_CLASS = re.compile(r"^class\s+(\w+)\s*\(\s*(?:mlserver\.)?MLModel\s*\)\s*:", re.MULTILINE)


def _first_file(folder: Path, suffixes: Sequence[str], requirement: str) -> str:
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in suffixes:
            return path.name
    wanted = ", ".join(f"*{suffix}" for suffix in suffixes)
    raise ModelSettingsError(f"requirement {requirement!r} needs a {wanted} file in the artifact")


def _file_runtime(implementation: str, suffixes: Sequence[str]) -> Callable[[Path, str], Settings]:
    def generate(folder: Path, requirement: str) -> Settings:
        uri = f"./{_first_file(folder, suffixes, requirement)}"
        return {"implementation": implementation, "parameters": {"uri": uri}}

    return generate


def _folder_runtime(implementation: str) -> Callable[[Path, str], Settings]:
    def generate(folder: Path, requirement: str) -> Settings:
        return {"implementation": implementation, "parameters": {"uri": "./"}}

    return generate


def _alibi_explain(folder: Path, requirement: str) -> Settings:
    subdirs = sorted(path.name for path in folder.iterdir() if path.is_dir())
    if not subdirs:
        raise ModelSettingsError("requirement 'alibi-explain' needs a sub-folder with the explainer")
    return {
        "implementation": "mlserver_alibi_explain.AlibiExplainRuntime",
        "parallel_workers": 0,
        "parameters": {"uri": f"./{subdirs[0]}"},
    }


def _python(folder: Path, requirement: str) -> Settings:
    for path in sorted(folder.glob("*.py")):
        match = _MLMODEL_CLASS.search(path.read_text(errors="replace"))
        if match:
            return {
                "implementation": f"{path.stem}.{match.group(1)}",
                "parameters": {"uri": f"./{path.name}"},
            }
    raise ModelSettingsError("requirement 'python' needs a *.py file defining a class derived from MLModel")


# Requirement -> generator, consulted in the order the model lists its requirements.
GENERATORS: Mapping[str, Callable[[Path, str], Settings]] = {
    "sklearn": _file_runtime("mlserver_sklearn.SKLearnModel", (".joblib", ".pkl", ".pickle")),
    "xgboost": _file_runtime("mlserver_xgboost.XGBoostModel", (".json", ".bst")),
    "lightgbm": _file_runtime("mlserver_lightgbm.LightGBMModel", (".bst",)),
    "mlflow": _folder_runtime("mlserver_mlflow.MLflowRuntime"),
    "alibi-detect": _folder_runtime("mlserver_alibi_detect.AlibiDetectRuntime"),
    "alibi-explain": _alibi_explain,
    "python": _python,
}


def generate_settings(folder: Path, requirements: Iterable[str]) -> Settings:
    """Settings for an artifact without model-settings.json, from its first recognised requirement."""
    requirements = list(requirements)
    for requirement in requirements:
        generator = GENERATORS.get(requirement.strip().lower())
        if generator is not None:
            return generator(folder, requirement.strip().lower())
    raise ModelSettingsError(
        f"the artifact has no {MODEL_SETTINGS} and none of the requirements {requirements} is one the "
        f"agent can generate settings for ({', '.join(GENERATORS)})"
    )


def callback_extra(spec: scheduler_pb2.ModelSpec, envoy_url: str) -> dict[str, str]:
    """``parameters.extra`` for a model that calls another through Envoy, as Seldon's agent writes it.

    An explainer (or an LLM) with a ``modelRef``/``pipelineRef`` is a black box around that model or
    pipeline: its runtime sends its own inference requests to ``infer_uri``, which goes through
    Envoy like any caller's (routing, experiments). Empty for every other model."""
    which = spec.WhichOneof("model_spec")
    if which is None:
        return {}
    refs: scheduler_pb2.ExplainerSpec | scheduler_pb2.LlmSpec = getattr(spec, which)
    extra: dict[str, str] = {}
    try:
        if refs.HasField("pipelineRef"):
            extra["infer_uri"] = (
                f"{envoy_url}/v2/pipelines/{validate_name(refs.pipelineRef, kind='pipeline')}/infer"
            )
        elif refs.HasField("modelRef"):
            extra["infer_uri"] = f"{envoy_url}/v2/models/{validate_name(refs.modelRef)}/infer"
    except InvalidResource as exc:
        raise ModelSettingsError(f"{which}: {exc}") from exc
    if isinstance(refs, scheduler_pb2.ExplainerSpec):
        extra["explainer_type"] = refs.type
    return extra


def rewrite_settings(
    settings: Settings, *, versioned_name: str, version: int, extra: Mapping[str, str], callback: bool = False
) -> Settings:
    """Serve under ``<model>_<version>``, tag the scheduler version and add ModelSpec.parameters.

    ``callback`` (an explainer or LLM calling through Envoy) runs the model in MLServer's own process
    (``parallel_workers: 0``), as Seldon's agent sets it: its requests leave the server while it waits."""
    rewritten = dict(settings)
    rewritten["name"] = versioned_name
    if callback:
        rewritten["parallel_workers"] = 0
    parameters = rewritten.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ModelSettingsError(f"{MODEL_SETTINGS}: 'parameters' must be an object")
    parameters = dict(parameters)
    parameters["version"] = str(version)
    if extra:
        current = parameters.get("extra") or {}
        if not isinstance(current, dict):
            raise ModelSettingsError(f"{MODEL_SETTINGS}: 'parameters.extra' must be an object")
        parameters["extra"] = {**current, **extra}
    rewritten["parameters"] = parameters
    return rewritten


def write_model_settings(
    folder: Path,
    *,
    versioned_name: str,
    version: int,
    requirements: Iterable[str],
    extra: Mapping[str, str],
    callback: bool = False,
) -> Settings:
    """Read (or generate) and rewrite ``folder/model-settings.json``; blocking, run it in a thread."""
    path = folder / MODEL_SETTINGS
    if path.is_file():
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelSettingsError(f"cannot read the artifact's {MODEL_SETTINGS}: {exc}") from exc
        if not isinstance(settings, dict):
            raise ModelSettingsError(f"the artifact's {MODEL_SETTINGS} is not a JSON object")
    else:
        settings = generate_settings(folder, requirements)
    settings = rewrite_settings(
        settings, versioned_name=versioned_name, version=version, extra=extra, callback=callback
    )
    try:
        path.write_text(json.dumps(settings, indent=2))
    except OSError as exc:
        raise ModelSettingsError(f"cannot write {path}: {exc}") from exc
    return settings
