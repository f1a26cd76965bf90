"""The reference's Triton examples as MLServer runtimes: tfsimple (``AddSub``), ``Add10``, ``Mul10``,
``Conditional``. What each takes and answers: :mod:`samples.runtimes.examples`."""

from __future__ import annotations

from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes import examples
from samples.runtimes.serving import Ready, as_mlserver_errors, respond


class AddSub(Ready):
    """tfsimple: the sum and the difference of two INT32 [b,16] tensors."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            outputs = examples.add_sub(self.name, payload.inputs)
            return respond(self, examples.requested(self.name, outputs, _names(payload)))


class Add10(Ready):
    """add10: FP32 INPUT [4] + 10."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            outputs = examples.add10(self.name, payload.inputs)
            return respond(self, examples.requested(self.name, outputs, _names(payload)))


class Mul10(Ready):
    """mul10: FP32 INPUT [4] * 10."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            outputs = examples.mul10(self.name, payload.inputs)
            return respond(self, examples.requested(self.name, outputs, _names(payload)))


class Conditional(Ready):
    """conditional: only OUTPUT0 (= INPUT0) when CHOICE is 0, else only OUTPUT1 (= INPUT1)."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            return respond(self, examples.conditional(self.name, payload.inputs))


def _names(payload: InferenceRequest) -> list[str]:
    return [out.name for out in payload.outputs or ()]
