"""A drift detector for the batched-step example (``Drift``). What it takes and answers:
:func:`samples.runtimes.examples.drift`."""

from __future__ import annotations

from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes import examples
from samples.runtimes.serving import Ready, as_mlserver_errors, respond


class Drift(Ready):
    """drift: is_drift INT64 [1,1] over a batch of INT32 INPUT0/INPUT1 [rows,16] (rows 1..64)."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            return respond(self, examples.drift(self.name, payload.inputs))
