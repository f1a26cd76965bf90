"""The reference's Triton examples as MLServer runtimes: tfsimple, add10, mul10 and conditional.

Inputs are declared as the Triton models declare them (seldon-pipelines.md §4.2, §4.5, §13):

* ``AddSub`` (tfsimple): INT32 ``INPUT0``, ``INPUT1`` of shape [batch, 16] (batch 1..8, Triton's
  ``max_batch_size``) -> ``OUTPUT0 = INPUT0 + INPUT1``, ``OUTPUT1 = INPUT0 - INPUT1`` (INT32, wrapping
  on overflow as Triton's does);
* ``Add10`` / ``Mul10``: FP32 ``INPUT`` [4] -> FP32 ``OUTPUT`` [4] = INPUT + 10 / INPUT * 10;
* ``Conditional``: INT32 ``CHOICE`` [1], FP32 ``INPUT0``, ``INPUT1`` [4] -> only ``OUTPUT0 = INPUT0``
  when CHOICE is 0, only ``OUTPUT1 = INPUT1`` otherwise (the branch a pipeline takes).
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes.tensors import InvalidTensor, TensorSpec, inputs_by_name, output

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


class _Stateless(MLModel):
    async def load(self) -> bool:
        self.ready = True
        return self.ready

    def _response(self, outputs: list[tuple[str, str, np.ndarray]]) -> InferenceResponse:
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[output(name, datatype, array) for name, datatype, array in outputs],
        )


class AddSub(_Stateless):
    """tfsimple: the sum and the difference of two INT32 tensors."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = inputs_by_name(self.name, payload, TFSIMPLE_INPUTS)
        a, b = tensors["INPUT0"], tensors["INPUT1"]
        if a.shape != b.shape:
            raise InvalidTensor(
                f"model {self.name}: INPUT0 {list(a.shape)} and INPUT1 {list(b.shape)} must have one shape"
            )
        with np.errstate(over="ignore"):  # int32 arithmetic wraps, as Triton's does
            return self._response([("OUTPUT0", "INT32", a + b), ("OUTPUT1", "INT32", a - b)])


class Add10(_Stateless):
    """add10: FP32 INPUT [4] + 10."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = inputs_by_name(self.name, payload, ARITH_INPUTS)["INPUT"]
        with np.errstate(over="ignore"):  # FP32 overflow becomes inf, as in Triton
            return self._response([("OUTPUT", "FP32", x + np.float32(10))])


class Mul10(_Stateless):
    """mul10: FP32 INPUT [4] * 10."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = inputs_by_name(self.name, payload, ARITH_INPUTS)["INPUT"]
        with np.errstate(over="ignore"):
            return self._response([("OUTPUT", "FP32", x * np.float32(10))])


class Conditional(_Stateless):
    """conditional: emits OUTPUT0 (= INPUT0) when CHOICE is 0, else OUTPUT1 (= INPUT1), never both."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = inputs_by_name(self.name, payload, CONDITIONAL_INPUTS)
        if int(tensors["CHOICE"][0]) == 0:
            return self._response([("OUTPUT0", "FP32", tensors["INPUT0"])])
        return self._response([("OUTPUT1", "FP32", tensors["INPUT1"])])
