"""Minimal MLServer runtimes for the pipeline tests: tfsimple-like add/sub, and a model that fails."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


def _input(payload: InferenceRequest, name: str):  # type: ignore[no-untyped-def]
    for tensor in payload.inputs:
        if tensor.name == name:
            return NumpyCodec.decode_input(tensor)
    raise ValueError(f"input {name} is missing")


class AddSub(MLModel):
    """OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (Triton's "simple")."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        a, b = _input(payload, "INPUT0"), _input(payload, "INPUT1")
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("OUTPUT0", a + b), NumpyCodec.encode_output("OUTPUT1", a - b)],
        )


class Boom(MLModel):
    """Fails every request."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("boom: this model always fails")
