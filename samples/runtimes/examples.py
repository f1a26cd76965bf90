"""What each of the reference's example models computes, transport-free (no MLServer import).

The MLServer runtimes (:mod:`~samples.runtimes.arithmetic`, :mod:`~samples.runtimes.cyclic`,
:mod:`~samples.runtimes.query`) call these functions on the request's tensors. Inputs are declared
as the reference's models declare them (seldon-pipelines.md §4.2, §4.5, §4.9, §13):

* tfsimple: INT32 ``INPUT0``, ``INPUT1`` [batch, 16] (batch 1..8, Triton's ``max_batch_size``) ->
  ``OUTPUT0 = INPUT0 + INPUT1``, ``OUTPUT1 = INPUT0 - INPUT1`` (INT32, wrapping as Triton's does);
* add10 / mul10: FP32 ``INPUT`` [4] -> FP32 ``OUTPUT`` [4];
* conditional: INT32 ``CHOICE`` [1], FP32 ``INPUT0``, ``INPUT1`` [4] -> only ``OUTPUT0 = INPUT0``
  when CHOICE is 0, only ``OUTPUT1 = INPUT1`` otherwise;
* counter: one INT32/INT64 tensor of any name holding one value -> the value + 1 and the flag
  ``continue`` (below 10) or ``stop``;
* choice query: the rows of one integer tensor equal to a value (``<tensor> == <integer>``);
* drift (standing in for the reference's alibi-detect drift detectors, which a pipeline runs as a
  batched step, §4.6): INT32 ``INPUT0``, ``INPUT1`` [rows, 16] (rows 1..64, a batch of requests) ->
  INT64 ``is_drift`` [1,1]: 1 when the batch's mean of INPUT0 is more than 1 away from the mean of
  the reference's data ``I = [1..16]`` (8.5), else 0;
* occlusion explainer: how far a model's outputs move when each input element is zeroed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from samples.runtimes.tensors import (
    InvalidTensor,
    Output,
    TensorLike,
    TensorSpec,
    datatype_of,
    decode,
    inputs_by_name,
)

TFSIMPLE_MAX_BATCH = 8
TFSIMPLE_INPUTS = (
    TensorSpec("INPUT0", "INT32", (-1, 16), TFSIMPLE_MAX_BATCH),
    TensorSpec("INPUT1", "INT32", (-1, 16), TFSIMPLE_MAX_BATCH),
)
ARITH_INPUTS = (TensorSpec("INPUT", "FP32", (4,)),)
CONDITIONAL_INPUTS = (
    TensorSpec("CHOICE", "INT32", (1,)),
    TensorSpec("INPUT0", "FP32", (4,)),
    TensorSpec("INPUT1", "FP32", (4,)),
)
DRIFT_MAX_ROWS = 64
DRIFT_INPUTS = (
    TensorSpec("INPUT0", "INT32", (-1, 16), DRIFT_MAX_ROWS),
    TensorSpec("INPUT1", "INT32", (-1, 16), DRIFT_MAX_ROWS),
)
DRIFT_REFERENCE_MEAN = 8.5  # of I = [1..16], the data the reference's examples send
DRIFT_TOLERANCE = 1.0
COUNTER_STOP_AT = 10
INTEGER_DATATYPES = ("INT32", "INT64")
MAX_DELAY_S = 10.0
# At most this many tensors are echoed; the cyclic example passes one or two.
MAX_IDENTITY_TENSORS = 64
_QUERY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]{0,127})\s*==\s*(-?\d{1,18})\s*")


class InvalidParameter(ValueError):
    """A model parameter (``parameters.extra``) the runtime cannot use: the load fails with it."""


def add_sub(model: str, inputs: Sequence[TensorLike]) -> list[Output]:
    tensors = inputs_by_name(model, inputs, TFSIMPLE_INPUTS)
    a, b = tensors["INPUT0"], tensors["INPUT1"]
    if a.shape != b.shape:
        raise InvalidTensor(
            f"model {model}: INPUT0 {list(a.shape)} and INPUT1 {list(b.shape)} must have one shape"
        )
    with np.errstate(over="ignore"):  # int32 arithmetic wraps, as Triton's does
        return [("OUTPUT0", "INT32", a + b), ("OUTPUT1", "INT32", a - b)]


def requested(model: str, outputs: list[Output], names: Sequence[str]) -> list[Output]:
    """Only the outputs named in the request's ``outputs`` (all when it names none), in the model's
    order, as Triton answers; an unknown name is the caller's error (seldon-pipelines.md §6.4)."""
    if not names:
        return outputs
    known = [name for name, _, _ in outputs]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InvalidTensor(f"model {model}: no output named {', '.join(unknown)}; it has {', '.join(known)}")
    return [out for out in outputs if out[0] in names]


def add10(model: str, inputs: Sequence[TensorLike]) -> list[Output]:
    x = inputs_by_name(model, inputs, ARITH_INPUTS)["INPUT"]
    with np.errstate(over="ignore"):  # FP32 overflow becomes inf, as in Triton
        return [("OUTPUT", "FP32", x + np.float32(10))]


def mul10(model: str, inputs: Sequence[TensorLike]) -> list[Output]:
    x = inputs_by_name(model, inputs, ARITH_INPUTS)["INPUT"]
    with np.errstate(over="ignore"):
        return [("OUTPUT", "FP32", x * np.float32(10))]


def conditional(model: str, inputs: Sequence[TensorLike]) -> list[Output]:
    tensors = inputs_by_name(model, inputs, CONDITIONAL_INPUTS)
    if int(tensors["CHOICE"][0]) == 0:
        return [("OUTPUT0", "FP32", tensors["INPUT0"])]
    return [("OUTPUT1", "FP32", tensors["INPUT1"])]


def drift(model: str, inputs: Sequence[TensorLike]) -> list[Output]:
    batch = inputs_by_name(model, inputs, DRIFT_INPUTS)["INPUT0"]
    drifted = abs(float(batch.mean()) - DRIFT_REFERENCE_MEAN) > DRIFT_TOLERANCE
    return [("is_drift", "INT64", np.array([[int(drifted)]], dtype=np.int64))]


def count(model: str, inputs: Sequence[TensorLike]) -> tuple[np.ndarray, str]:
    """The single input value + 1 (1-D, its own dtype), and ``continue`` below 10 or ``stop``."""
    if len(inputs) != 1:
        names = [tensor.name for tensor in inputs]
        raise InvalidTensor(f"model {model}: takes exactly one input tensor, got {names}")
    tensor = inputs[0]
    datatype = datatype_of(tensor)
    if datatype not in INTEGER_DATATYPES or math.prod(tensor.shape) != 1:
        raise InvalidTensor(
            f"model {model}: input {tensor.name!r} must hold one {' or '.join(INTEGER_DATATYPES)} value, "
            f"got {datatype} {list(tensor.shape)}"
        )
    value = decode(model, tensor).reshape(-1)
    if value.item() >= np.iinfo(value.dtype).max:
        raise InvalidTensor(f"model {model}: {value.item()} is the largest {datatype}")
    counted = value + 1
    return counted, "continue" if counted.item() < COUNTER_STOP_AT else "stop"


def check_echo(model: str, inputs: Sequence[TensorLike]) -> None:
    if len(inputs) > MAX_IDENTITY_TENSORS:
        raise InvalidTensor(
            f"model {model}: {len(inputs)} input tensors, above the limit of {MAX_IDENTITY_TENSORS}"
        )


def delay_seconds(model: str, raw: object) -> float:
    """``parameters.extra.delay``: a number of seconds (a Model's parameters arrive as strings)."""
    try:
        delay = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameter(
            f"model {model}: parameter delay must be a number of seconds, not {raw!r}"
        ) from None
    if not 0 <= delay <= MAX_DELAY_S:
        raise InvalidParameter(
            f"model {model}: parameter delay must be within 0..{MAX_DELAY_S:g}s, not {raw!r}"
        )
    return delay


@dataclass(frozen=True, slots=True)
class Query:
    """``<tensor> == <value>``: which rows of one integer tensor a choice query keeps."""

    tensor: str
    value: int

    @classmethod
    def parse(cls, model: str, text: object) -> Query:
        match = _QUERY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise InvalidParameter(
                f"model {model}: parameter query must read '<tensor> == <integer>' (e.g. 'choice == 1'), "
                f"got {text!r}"
            )
        return cls(match.group(1), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.tensor} == {self.value}"

    def matching(self, model: str, inputs: Sequence[TensorLike]) -> Output | None:
        """The rows equal to the value under the tensor's name, or None if no row is."""
        found = [tensor for tensor in inputs if tensor.name == self.tensor]
        if len(found) != 1:
            given = [tensor.name for tensor in inputs]
            raise InvalidTensor(
                f"model {model}: the query {self} needs exactly one input {self.tensor!r}, got {given}"
            )
        tensor = found[0]
        datatype, shape = datatype_of(tensor), list(tensor.shape)
        if datatype not in INTEGER_DATATYPES or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise InvalidTensor(
                f"model {model}: input {tensor.name!r} must be INT32 or INT64 of shape [rows] or "
                f"[rows, 1], got {datatype} {shape}"
            )
        rows = decode(model, tensor).reshape(-1)
        kept = rows[rows == self.value]
        return (tensor.name, datatype, kept) if kept.size else None


def occluded(x: np.ndarray) -> list[np.ndarray]:
    """``x`` with each element in turn set to zero."""
    variants = []
    for i in range(x.size):
        variant = x.copy().reshape(-1)
        variant[i] = 0
        variants.append(variant.reshape(x.shape))
    return variants


def importances(baseline: np.ndarray, answers: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    moved = [float(np.abs(answer - baseline).sum()) for answer in answers]
    return np.asarray(moved, dtype=np.float32).reshape(shape)
