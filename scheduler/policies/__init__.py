"""Placement policies selectable by name.

A policy is any :class:`scheduler.placement.PlacementPolicy`. Policies are registered under the
entry-point group ``meshserve.placement`` (name → zero-argument factory) and picked with
:func:`load_policy`; see ``docs/placement-plugins.md``. Built-ins: ``seldon`` (the reference
rules, the default), ``binpack`` (fewest replicas) and ``spread-hash`` (stable hashed placement).
"""

from scheduler.policies.binpack import binpack
from scheduler.policies.registry import (
    BUILTIN_POLICIES,
    DEFAULT_POLICY,
    ENTRY_POINT_GROUP,
    EntryPointLike,
    PolicyError,
    PolicyFactory,
    UnknownPolicyError,
    available_policies,
    load_policy,
)
from scheduler.policies.spread_hash import spread_hash

__all__ = [
    "BUILTIN_POLICIES",
    "DEFAULT_POLICY",
    "ENTRY_POINT_GROUP",
    "EntryPointLike",
    "PolicyError",
    "PolicyFactory",
    "UnknownPolicyError",
    "available_policies",
    "binpack",
    "load_policy",
    "spread_hash",
]
