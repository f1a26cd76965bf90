"""Find placement policies by name: entry points of the group ``meshserve.placement``.

Each entry point names a zero-argument factory returning a :class:`PlacementPolicy`. The
built-ins are registered in meshserve's own ``pyproject.toml``; :data:`BUILTIN_POLICIES` holds the
same factories so a source checkout whose install metadata predates them still finds them.
An entry point wins over a built-in of the same name.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.placement import PlacementPolicy, Policy
from scheduler.policies.binpack import binpack
from scheduler.policies.spread_hash import spread_hash

ENTRY_POINT_GROUP = "meshserve.placement"
DEFAULT_POLICY = "seldon"

PolicyFactory = Callable[[], PlacementPolicy]

BUILTIN_POLICIES: Mapping[str, PolicyFactory] = {
    "seldon": Policy,
    "binpack": binpack,
    "spread-hash": spread_hash,
}


class EntryPointLike(Protocol):
    """The part of :class:`importlib.metadata.EntryPoint` the registry uses."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


class PolicyError(Exception):
    """A placement policy could not be loaded."""


class UnknownPolicyError(PolicyError, LookupError):
    """No policy is registered under the requested name."""


def _discover() -> list[EntryPointLike]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def available_policies(entry_points: Iterable[EntryPointLike] | None = None) -> list[str]:
    """Sorted names :func:`load_policy` accepts (``entry_points`` defaults to the installed ones)."""
    found = _discover() if entry_points is None else entry_points
    return sorted({*BUILTIN_POLICIES, *(ep.name for ep in found)})


def load_policy(name: str, *, entry_points: Iterable[EntryPointLike] | None = None) -> PlacementPolicy:
    """Build the policy registered as ``name``.

    ``entry_points`` replaces discovery of the installed entry points (tests pass their own).
    Raises :class:`UnknownPolicyError` (listing the available names) for an unregistered name,
    :class:`PolicyError` when the name is registered twice with different targets, when the
    factory cannot be imported or raises, or when it returns something that is not a policy.
    """
    found = _discover() if entry_points is None else list(entry_points)
    targets = sorted({ep.value for ep in found if ep.name == name})
    if len(targets) > 1:
        raise PolicyError(f"placement policy {name!r} is registered more than once: {', '.join(targets)}")
    if targets:
        entry_point = next(ep for ep in found if ep.name == name)
        try:
            factory = entry_point.load()
        except Exception as exc:
            raise PolicyError(f"cannot import placement policy {name!r} ({entry_point.value})") from exc
    elif name in BUILTIN_POLICIES:
        factory = BUILTIN_POLICIES[name]
    else:
        available = ", ".join(available_policies(found))
        raise UnknownPolicyError(f"unknown placement policy {name!r}; available: {available}")
    try:
        policy = factory()
    except Exception as exc:
        raise PolicyError(f"placement policy factory {name!r} failed") from exc
    if not isinstance(policy, PlacementPolicy):
        raise PolicyError(f"placement policy factory {name!r} returned {type(policy).__name__}, not a policy")
    return policy


if TYPE_CHECKING:
    _entry_point: EntryPointLike = importlib.metadata.EntryPoint("name", "module:attr", ENTRY_POINT_GROUP)
