"""The cyclic-pipeline example's models (seldon-pipelines.md §4.9, scenario 30): counter and identity.

``Counter`` reads its one input tensor (whatever its name: ``counter-pipeline.inputs`` on the first
pass, ``output`` when the loop feeds it back), an INT32 or INT64 holding a single value, and adds 1.
It answers ``output`` (the number, NumpyCodec: shape [1, 1], ``content_type: np``) plus an empty
BYTES trigger tensor (StringCodec, payload ``[""]``) named ``continue`` below 10 and ``stop`` from 10
on. ``Identity`` echoes every input, after ``parameters.extra.delay`` seconds (the loop model's 1 ms
keeps iterations apart in the join windows).
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from samples.runtimes.tensors import InvalidTensor, decode

STOP_AT = 10
COUNTER_DATATYPES = ("INT32", "INT64")
MAX_DELAY_S = 10.0
# At most this many tensors are echoed; the cyclic example passes one or two.
MAX_IDENTITY_TENSORS = 64


class Counter(MLModel):
    """Adds 1 to its single input and says whether the loop goes on (``continue``) or ``stop``s."""

    async def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            names = [tensor.name for tensor in payload.inputs]
            raise InvalidTensor(f"model {self.name}: takes exactly one input tensor, got {names}")
        tensor = payload.inputs[0]
        if tensor.datatype not in COUNTER_DATATYPES or math.prod(tensor.shape) != 1:
            raise InvalidTensor(
                f"model {self.name}: input {tensor.name!r} must hold one {' or '.join(COUNTER_DATATYPES)} "
                f"value, got {tensor.datatype} {list(tensor.shape)}"
            )
        value = decode(self.name, tensor)
        if value.item() >= np.iinfo(value.dtype).max:
            raise InvalidTensor(f"model {self.name}: {value.item()} is the largest {tensor.datatype}")
        counted = value + 1
        flag = "continue" if counted.item() < STOP_AT else "stop"
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name="output", payload=counted.reshape(-1)),
                StringCodec.encode_output(name=flag, payload=[""]),
            ],
        )


class Identity(MLModel):
    """Echoes every input tensor unchanged (name, datatype, shape, parameters, data) after a delay."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra if self.settings.parameters is not None else None
        self._delay = delay_seconds(self.name, (extra or {}).get("delay", 0))
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) > MAX_IDENTITY_TENSORS:
            raise InvalidTensor(
                f"model {self.name}: {len(payload.inputs)} input tensors, above the limit of "
                f"{MAX_IDENTITY_TENSORS}"
            )
        if self._delay:
            await asyncio.sleep(self._delay)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                ResponseOutput(
                    name=tensor.name,
                    shape=tensor.shape,
                    datatype=tensor.datatype,
                    parameters=tensor.parameters,
                    data=tensor.data,
                )
                for tensor in payload.inputs
            ],
        )


def delay_seconds(model: str, raw: object) -> float:
    """``parameters.extra.delay``: a number of seconds (a Model's parameters arrive as strings)."""
    try:
        delay = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        message = f"model {model}: parameter delay must be a number of seconds, not {raw!r}"
        raise MLServerError(message) from None
    if not 0 <= delay <= MAX_DELAY_S:
        raise MLServerError(f"model {model}: parameter delay must be within 0..{MAX_DELAY_S:g}s, not {raw!r}")
    return delay
