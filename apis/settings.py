"""Process settings: a frozen dataclass per process, its flags and environment variables derived.

The rule every process follows (docs/decisions/0009): field ``foo_bar`` of a process's config is
the flag ``--foo-bar`` and the environment variable ``<PREFIX>FOO_BAR``, where the prefix names the
process (``MESHSERVE_SCHEDULER_``, ``MESHSERVE_AGENT_``, ``MESHSERVE_CLI_``, ``MESHSERVE_STACK_``).
A flag wins over the environment, which wins over the field's default. So one name never means
two things to two processes.

A field declares its help text (and, when its type is not enough, a parser) in its metadata with
:func:`flag`.
Types understood without a parser: ``str``, ``int``, ``float``, ``bool``, ``Path`` and ``X | None``
(where an empty value means None). A field without a default is required; ``flag=False`` keeps a
field off the command line (set by the caller) with ``metadata=NOT_A_FLAG``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
Parse = Callable[[str], Any]


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot parse."""


def flag(help: str = "", *, parse: Parse | None = None) -> dict[str, Any]:
    """A field's metadata: ``field(default=9004, metadata=flag("Scheduler API port"))``."""
    return {"help": help, "parse": parse}


# Metadata of a field kept off the command line (its caller sets it).
NOT_A_FLAG: Mapping[str, Any] = MappingProxyType({"flag": False})


def env_name(prefix: str, name: str) -> str:
    return prefix + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be above 0")
    return value


def int_within(low: int, high: int) -> Parse:
    """A parser of whole numbers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{value} is not within {low}..{high}")
        return value

    return parse


def seconds_up_to(high: float) -> Parse:
    """A parser of durations above 0 and at most ``high`` seconds."""

    def parse(text: str) -> float:
        value = positive_float(text)
        if value > high:
            raise ValueError(f"{text!r} is above {high:g} seconds")
        return value

    return parse


def flag_fields(cls: type) -> Iterator[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(cls) if f.metadata.get("flag", True))


def env_defaults(cls: type, *, prefix: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Each flag field's value before flags: from the environment, else the default (if any)."""
    parsers = _parsers(cls)
    values: dict[str, Any] = {}
    for field in flag_fields(cls):
        variable = env_name(prefix, field.name)
        if variable in env:
            try:
                values[field.name] = parsers[field.name](env[variable])
            except ValueError as exc:
                raise SettingError(f"{variable}={env[variable]!r}: {exc}") from exc
        elif field.default is not dataclasses.MISSING:
            values[field.name] = field.default
    return values


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    prefix: str,
    env: Mapping[str, str],
    suppress: bool = False,
) -> None:
    """One flag per field of ``cls``; a required field missing from flags and environment is None.

    ``suppress`` leaves an absent flag out of the namespace (flags accepted before and after a
    subcommand); fill those in with :func:`env_defaults`.
    """
    try:
        defaults = env_defaults(cls, prefix=prefix, env=env)
    except SettingError as exc:
        parser.error(str(exc))
    parsers = _parsers(cls)
    for field in flag_fields(cls):
        shown = _shown(field.default)
        text = f"{field.metadata.get('help', '')} [env {env_name(prefix, field.name)}, default {shown}]"
        default = argparse.SUPPRESS if suppress else defaults.get(field.name)
        options: dict[str, Any] = {"default": default, "help": text.strip().replace("%", "%%")}
        if parsers[field.name] is parse_bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _argument_type(parsers[field.name])
        parser.add_argument(flag_name(field.name), dest=field.name, **options)


def build(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The config from parsed flags; ``overrides`` set derived or ``flag=False`` fields."""
    values = {f.name: getattr(args, f.name) for f in flag_fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def missing(cls: type, args: argparse.Namespace) -> list[str]:
    """Flags of required fields given neither as a flag nor in the environment."""
    return [
        flag_name(f.name)
        for f in flag_fields(cls)
        if f.default is dataclasses.MISSING and getattr(args, f.name, None) is None
    ]


def _parsers(cls: type) -> dict[str, Parse]:
    hints = get_type_hints(cls)
    return {f.name: f.metadata.get("parse") or _parser_for(hints[f.name]) for f in dataclasses.fields(cls)}


_PARSERS: dict[Any, Parse] = {str: str, int: int, float: float, bool: parse_bool, Path: Path}


def _parser_for(kind: Any) -> Parse:
    if get_origin(kind) in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(kind) if arg is not type(None)]
        base = _parser_for(inner)
        return lambda text: base(text) if text else None
    if kind not in _PARSERS:
        raise TypeError(f"no parser for settings of type {kind!r}; give the field parse=")
    return _PARSERS[kind]


def _argument_type(parse: Parse) -> Parse:
    """argparse shows a ValueError's message only when it is an ArgumentTypeError."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value {text!r}") from exc

    return convert


def _shown(default: Any) -> str:
    if default is dataclasses.MISSING:
        return "none (required)"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)
