"""The cyclic-pipeline example's models (seldon-pipelines.md §4.9, scenario 30) as MLServer runtimes.

``Counter`` answers ``output`` (value + 1, NumpyCodec: shape [1, 1], ``content_type: np``) plus an
empty BYTES trigger tensor (StringCodec, ``[""]``) named ``continue`` below 10 and ``stop`` from 10
on, as the reference's does. ``Identity`` echoes every input after ``parameters.extra.delay``
seconds (the loop model's 1 ms keeps iterations apart in the 1 ms join windows).
"""

from __future__ import annotations

import asyncio

from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from samples.runtimes import examples
from samples.runtimes.serving import Ready, as_mlserver_errors, respond


class Counter(Ready):
    """Adds 1 to its single input and says whether the loop goes on (``continue``) or ``stop``s."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            counted, flag = examples.count(self.name, payload.inputs)
        return respond(
            self,
            [
                NumpyCodec.encode_output(name="output", payload=counted),
                StringCodec.encode_output(name=flag, payload=[""]),
            ],
        )


class Identity(Ready):
    """Echoes every input tensor unchanged (name, datatype, shape, parameters, data) after a delay."""

    async def load(self) -> bool:
        with as_mlserver_errors():
            self._delay = examples.delay_seconds(self.name, self.extra().get("delay", 0))
        return await super().load()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            examples.check_echo(self.name, payload.inputs)
        if self._delay:
            await asyncio.sleep(self._delay)
        echoed = [
            ResponseOutput(
                name=tensor.name,
                shape=tensor.shape,
                datatype=tensor.datatype,
                parameters=tensor.parameters,
                data=tensor.data,
            )
            for tensor in payload.inputs
        ]
        return respond(self, echoed)
