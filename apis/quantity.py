"""Kubernetes resource quantities (``100Ki``, ``3M``, ``1.5Gi``) to a byte count."""

from __future__ import annotations

import math
import re
from decimal import Decimal

from apis.limits import MAX_MEMORY_BYTES

_SUFFIXES: dict[str, int] = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[kMGTPE])?$")
_UINT64_MAX = 2**64 - 1


def parse_quantity(value: object) -> int:
    """Bytes for a quantity given as a YAML int, float or string; raises ValueError.

    Fractions round up, as Kubernetes does for byte quantities, so ``0.5`` asks for one byte.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a quantity")
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a quantity (use e.g. 500, 100Ki, 3M, 1.5Gi)")
    suffix = match["suffix"] or ""
    count = math.ceil(Decimal(match["number"]) * _SUFFIXES[suffix])
    if count > _UINT64_MAX:
        raise ValueError(f"{value!r} is too large")
    return count


def parse_memory(value: object) -> int:
    """A server replica's memory: a quantity from one byte up to ``MAX_MEMORY_BYTES``; ValueError else."""
    count = parse_quantity(value)
    if not 0 < count <= MAX_MEMORY_BYTES:
        raise ValueError(
            f"{value!r} is out of range: memory must be above 0 and at most {MAX_MEMORY_BYTES} bytes"
        )
    return count
