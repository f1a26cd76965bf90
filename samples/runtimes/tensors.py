"""Checking the tensors of a V2 request against what a runtime declares, with errors that say why.

Every refusal is an :class:`InvalidTensor` naming the model, the tensor and what was expected; the
MLServer adapters (:mod:`samples.runtimes.serving`) turn it into HTTP 400 / gRPC INVALID_ARGUMENT.
This module does not import MLServer: its generated ``inference`` protos cannot share a process
with the project's own (``apis.v2_dataplane``), so the logic is testable beside them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# No sample declares a tensor bigger than this; a larger one is refused before it is decoded.
MAX_ELEMENTS = 4096
# The datatypes the samples read, and the numpy types they decode to.
NUMERIC: dict[str, np.dtype] = {
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


class InvalidTensor(ValueError):
    """A request whose tensors do not match what the model declares (HTTP 400 once served)."""


class TensorLike(Protocol):
    """What is read of a request tensor (MLServer's ``RequestInput`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> Any: ...
    @property
    def shape(self) -> list[int]: ...
    @property
    def data(self) -> Any: ...


# A response tensor before it is encoded: name, datatype, values.
Output = tuple[str, str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared input: its name, datatype and shape (``-1`` is a batch dimension of 1..max_batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    max_batch: int = 1

    def describe(self) -> str:
        dims = ",".join(f"1..{self.max_batch}" if d == -1 else str(d) for d in self.shape)
        return f"{self.datatype} [{dims}]"

    def accepts(self, shape: Sequence[int]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(
            (1 <= got <= self.max_batch) if want == -1 else got == want
            for got, want in zip(shape, self.shape, strict=True)
        )


def inputs_by_name(
    model: str, inputs: Sequence[TensorLike], specs: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """The declared inputs decoded, in any order; refuses missing, unexpected and duplicate tensors."""
    names = [tensor.name for tensor in inputs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidTensor(f"model {model}: input {duplicates[0]!r} is given more than once")
    declared = {spec.name for spec in specs}
    unexpected = [name for name in names if name not in declared]
    if unexpected:
        raise InvalidTensor(f"model {model}: unexpected input {unexpected[0]!r}; it takes {_listing(specs)}")
    given = {tensor.name: tensor for tensor in inputs}
    decoded = {}
    for spec in specs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidTensor(f"model {model}: input {spec.name!r} is missing; it takes {_listing(specs)}")
        if datatype_of(tensor) != spec.datatype or not spec.accepts(tensor.shape):
            raise InvalidTensor(
                f"model {model}: input {spec.name!r} must be {spec.describe()}, got "
                f"{datatype_of(tensor)} {list(tensor.shape)}"
            )
        decoded[spec.name] = decode(model, tensor)
    return decoded


def decode(model: str, tensor: TensorLike) -> np.ndarray:
    """The tensor as a numpy array of its shape; refuses oversized data, data that does not fill the
    shape, and values the datatype cannot hold (no silent truncation of 1.5 or 2**40 into INT32)."""
    shape = list(tensor.shape)
    where = f"model {model}: input {tensor.name!r}"
    datatype = datatype_of(tensor)
    dtype = NUMERIC.get(datatype)
    if dtype is None:
        raise InvalidTensor(f"{where}: datatype {datatype} is not one of {', '.join(NUMERIC)}")
    if any(d < 0 for d in shape):
        raise InvalidTensor(f"{where} has a negative dimension in its shape {shape}")
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise InvalidTensor(f"{where} has {elements} elements, above the limit of {MAX_ELEMENTS}")
    try:
        values = np.asarray(getattr(tensor.data, "root", tensor.data)).reshape(-1)
    except ValueError as exc:  # ragged nesting
        raise InvalidTensor(f"{where}: its data is not a rectangular list of numbers ({exc})") from exc
    if values.size != elements:
        raise InvalidTensor(f"{where} holds {values.size} values; shape {shape} needs {elements}")
    _check_representable(where, datatype, values, dtype)
    return values.astype(dtype).reshape(shape)


def datatype_of(tensor: TensorLike) -> str:
    """The datatype as text (MLServer gives a ``Datatype`` enum, whose format differs by Python)."""
    return str(getattr(tensor.datatype, "value", tensor.datatype))


def _check_representable(where: str, datatype: str, values: np.ndarray, dtype: np.dtype) -> None:
    if values.size == 0:
        return
    if values.dtype.kind not in "iuf":
        raise InvalidTensor(f"{where}: {datatype} data must be numbers within the range of {datatype}")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise InvalidTensor(f"{where}: {datatype} data must be finite numbers")
    if dtype.kind == "f":
        limit = float(np.finfo(dtype).max)
        if float(np.abs(values).max()) > limit:
            raise InvalidTensor(f"{where}: a value is beyond the range of {datatype} (+-{limit:g})")
        return
    if values.dtype.kind == "f" and not (values == np.trunc(values)).all():
        raise InvalidTensor(f"{where}: {datatype} data must be whole numbers")
    info = np.iinfo(dtype)
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        raise InvalidTensor(f"{where}: a value is outside the range of {datatype} ({info.min}..{info.max})")


def _listing(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{spec.name} ({spec.describe()})" for spec in specs)
