"""Tensors as the dataflow engine moves them: Open Inference Protocol (V2) JSON shape, typed.

A :class:`Tensor` is one named tensor (``name``, ``datatype``, ``shape``, ``data``, optional
``parameters``); a :data:`Message` is an ordered tuple of them: a request's ``inputs`` or a
response's ``outputs``. The engine never looks inside ``data``: renaming (``tensorMap``) is the only
transformation a pipeline applies (seldon-pipelines.md §4.1), so ``data`` stays in whatever form the
edge decoded (nested or flat lists, as OIP JSON allows). Values are immutable; a renamed tensor is a
new value sharing the same ``data``.

``from_json`` is the checked way in from a caller's JSON: it raises :class:`InvalidTensor` naming the
tensor and what is wrong (datatype, shape, element count), before any step runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# The OIP datatypes (https://github.com/kserve/open-inference-protocol, "Tensor Data Types").
DATATYPES = frozenset(
    {
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    }
)
# A tensor name travels in Kafka messages, tensorMap values and error messages.
MAX_TENSOR_NAME_LENGTH = 256
MAX_DIMENSIONS = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidTensor(ValueError):
    """A tensor from a caller is malformed; the message names the tensor and the problem."""


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # a list (nested or flat, row-major) as in OIP JSON; never inspected by the engine
    parameters: Mapping[str, Any] | None = None

    def renamed(self, name: str) -> Tensor:
        return self if name == self.name else replace(self, name=name)

    @classmethod
    def from_json(cls, value: object) -> Tensor:
        """One OIP JSON tensor (``{"name", "datatype", "shape", "data"[, "parameters"]}``), checked."""
        if not isinstance(value, Mapping):
            raise InvalidTensor(
                f"a tensor must be an object with name, datatype, shape and data, got {value!r}"
            )
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidTensor(f"a tensor has no name (got {name!r})")
        check_tensor_name(name)
        datatype = value.get("datatype")
        if datatype not in DATATYPES:
            raise InvalidTensor(
                f"tensor {name}: datatype {datatype!r} is unknown; use one of {', '.join(sorted(DATATYPES))}"
            )
        shape = value.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMENSIONS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise InvalidTensor(
                f"tensor {name}: shape must be a list of at most {MAX_DIMENSIONS} non-negative integers, "
                f"got {shape!r}"
            )
        data = value.get("data")
        if not isinstance(data, list):
            raise InvalidTensor(f"tensor {name}: data must be a list, got {type(data).__name__}")
        count = len(data) if list not in map(type, data) else _element_count(data)  # flat: no walk
        if count != math.prod(shape):
            raise InvalidTensor(
                f"tensor {name}: shape {shape} holds {math.prod(shape)} elements but data has {count}"
            )
        parameters = value.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise InvalidTensor(f"tensor {name}: parameters must be an object, got {parameters!r}")
        return cls(name, str(datatype), tuple(shape), data, dict(parameters) if parameters else None)

    def to_json(self) -> dict[str, Any]:
        """OIP JSON, in the reference's key order (data, name, shape, datatype, parameters; §6.4)."""
        out: dict[str, Any] = {
            "data": self.data,
            "name": self.name,
            "shape": list(self.shape),
            "datatype": self.datatype,
        }
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        return out


Message = tuple[Tensor, ...]
"""The tensors of one request (``inputs``) or response (``outputs``), in order; names may repeat."""


def message_from_json(values: object, *, field: str = "inputs") -> Message:
    """A request's ``inputs`` (or a response's ``outputs``) list to a Message; raises InvalidTensor."""
    if not isinstance(values, list):
        raise InvalidTensor(f"{field} must be a list of tensors, got {type(values).__name__}")
    return tuple(Tensor.from_json(value) for value in values)


def message_to_json(message: Iterable[Tensor]) -> list[dict[str, Any]]:
    return [tensor.to_json() for tensor in message]


def find(message: Sequence[Tensor], name: str) -> Tensor | None:
    """The first tensor called ``name`` (a reference to a tensor takes the first of that name)."""
    return next((tensor for tensor in message if tensor.name == name), None)


def check_tensor_name(name: str) -> str:
    if len(name) > MAX_TENSOR_NAME_LENGTH:
        raise InvalidTensor(
            f"tensor name is {len(name)} characters long; the limit is {MAX_TENSOR_NAME_LENGTH}"
        )
    if _CONTROL.search(name):
        raise InvalidTensor(f"tensor name {name[:40]!r} contains a control character")
    return name


def _element_count(data: list[Any]) -> int:
    # Nested lists (row-major) or a flat list; anything else is one element (BYTES strings too).
    count = 0
    stack: list[Any] = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        else:
            count += 1
    return count


def flat_data(data: Sequence[Any]) -> list[Any]:
    """``data`` flattened (row-major) to one list, whether it came nested or flat; iterative."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()
