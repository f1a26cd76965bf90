"""Helpers shared by the manifest readers: documents, resource envelope, typed field access."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from apis.limits import MAX_GENERATION, MAX_REQUIREMENTS
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import InvalidResource

API_VERSION = "mlops.seldon.io/v1alpha1"
_TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_UINT32_MAX = 2**32 - 1


class ManifestError(ValueError):
    """One document is wrong; the message names the field."""


class ManifestFileError(ValueError):
    """A manifest file cannot be used; the message names the file (and document)."""


def _resource(document: object, kind: str, command: str) -> dict[str, Any]:
    """Common checks of a Seldon resource; returns its spec."""
    if not isinstance(document, dict):
        raise ManifestError(f"expected a mapping (a Kubernetes resource), got {_type_name(document)}")
    if document.get("apiVersion") != API_VERSION:
        raise ManifestError(f"apiVersion is {document.get('apiVersion')!r}; expected {API_VERSION!r}")
    if document.get("kind") != kind:
        raise ManifestError(f"kind is {document.get('kind')!r}; '{command}' takes kind {kind!r}")
    _reject_unknown(document, _TOP_LEVEL_FIELDS, prefix="")
    return _mapping(document, "spec", required=True)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ManifestFileError(f"{path}: {exc.strerror or exc}") from exc


def _load_documents(text: str, source: str) -> list[Any]:
    documents: list[Any] = []
    try:
        for document in yaml.safe_load_all(text):
            documents.append(document)
    except yaml.YAMLError as exc:
        raise ManifestFileError(f"{source}: document {len(documents) + 1}: {_yaml_problem(exc)}") from exc
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp with a 13th month
        raise ManifestFileError(
            f"{source}: document {len(documents) + 1}: invalid YAML value: {exc}"
        ) from exc
    except RecursionError as exc:
        raise ManifestFileError(f"{source}: document {len(documents) + 1}: YAML nested too deeply") from exc
    return documents


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _fill_meta(meta: scheduler_pb2.MetaData, metadata: Mapping[str, Any]) -> None:
    name = _string(metadata, "name", "metadata.")
    if name is None:
        raise ManifestError("metadata.name is missing")
    meta.name = name
    # Labels, annotations and the like are Kubernetes-only and have no place in the scheduler API.
    namespace = _string(metadata, "namespace", "metadata.")
    if namespace is not None:
        meta.kubernetesMeta.namespace = namespace
    if "generation" in metadata:
        generation = metadata["generation"]
        if (
            isinstance(generation, bool)
            or not isinstance(generation, int)
            or not 0 <= generation <= MAX_GENERATION
        ):
            raise ManifestError(
                f"metadata.generation must be an integer within 0..{MAX_GENERATION}, got {generation!r}"
            )
        meta.kubernetesMeta.generation = generation


def _reject_unknown(mapping: Mapping[str, Any], allowed: frozenset[str], *, prefix: str) -> None:
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        fields = ", ".join(prefix + key for key in unknown)
        raise ManifestError(f"unknown field{'s' if len(unknown) > 1 else ''} {fields}")


def _mapping(
    parent: Mapping[str, Any], key: str, *, prefix: str = "", required: bool = False
) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{prefix}{key} is missing")
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{prefix}{key} must be a mapping, got {_type_name(value)}")
    return value


def _string(parent: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{prefix}{key} must be a string, got {_type_name(value)}")
    return _text(value, f"{prefix}{key}")


def _string_list(spec: Mapping[str, Any], key: str) -> list[str]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ManifestError(f"spec.{key} must be a list of strings")
    if len(value) > MAX_REQUIREMENTS:
        raise ManifestError(f"spec.{key} has {len(value)} entries; the limit is {MAX_REQUIREMENTS}")
    return [_text(item, f"spec.{key}") for item in value]


def _text(value: str, field: str) -> str:
    # YAML escapes can make lone surrogates, which no protobuf string (UTF-8) can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ManifestError(f"{field} is not valid text: {exc.reason}") from exc
    return value


def _uint32(spec: Mapping[str, Any], key: str, prefix: str = "spec.") -> int:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
        raise ManifestError(f"{prefix}{key} must be a non-negative integer, got {value!r}")
    return value


def _bool(parent: Mapping[str, Any], key: str, prefix: str) -> bool:
    value = parent[key]
    if not isinstance(value, bool):
        raise ManifestError(f"{prefix}{key} must be true or false, got {value!r}")
    return value


def _type_name(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


R = TypeVar("R")


def _parse_documents(
    text: str,
    *,
    source: str,
    kind: str,
    build: Callable[[object], R],
    name_of: Callable[[R], str],
    check: Callable[[R], object] | None = None,
) -> list[R]:
    """Every ``kind`` document of a multi-document file, built and checked before any is used.

    Errors name the file and the document; a name defined twice in one file is refused.
    """
    built: list[R] = []
    seen: dict[str, int] = {}
    for index, document in enumerate(_load_documents(text, source), start=1):
        if document is None:
            continue
        try:
            request = build(document)
            if check is not None:
                check(request)
            name = name_of(request)
            if name in seen:
                raise ManifestError(f"{kind.lower()} {name!r} is already defined in document {seen[name]}")
        except (ManifestError, InvalidResource) as exc:
            raise ManifestFileError(f"{source}: document {index}: {exc}") from exc
        seen[name] = index
        built.append(request)
    if not built:
        raise ManifestFileError(f"{source}: no {kind} documents found")
    return built
