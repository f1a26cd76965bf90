"""The MLServer side of the sample runtimes: tensors out, errors translated to MLServer's.

:class:`~samples.runtimes.tensors.InvalidTensor` becomes ``InferenceError`` (HTTP 400, gRPC
INVALID_ARGUMENT); :class:`~samples.runtimes.examples.InvalidParameter` becomes ``MLServerError``,
which fails the model's load with its message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mlserver import MLModel
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceResponse, ResponseOutput

from samples.runtimes.examples import InvalidParameter
from samples.runtimes.tensors import InvalidTensor, Output


@contextmanager
def as_mlserver_errors() -> Iterator[None]:
    try:
        yield
    except InvalidTensor as exc:
        raise InferenceError(str(exc)) from None
    except InvalidParameter as exc:
        raise MLServerError(str(exc)) from None


def encode(output: Output) -> ResponseOutput:
    """A tensor of the array's own shape, as Triton answers (no content-type parameter)."""
    name, datatype, array = output
    return ResponseOutput(
        name=name, datatype=datatype, shape=list(array.shape), data=array.flatten().tolist()
    )


def respond(model: MLModel, outputs: Sequence[Output | ResponseOutput]) -> InferenceResponse:
    return InferenceResponse(
        model_name=model.name,
        model_version=model.version,
        outputs=[out if isinstance(out, ResponseOutput) else encode(out) for out in outputs],
    )


class Ready(MLModel):
    """A runtime with nothing to load."""

    async def load(self) -> bool:
        self.ready = True
        return self.ready

    def extra(self) -> dict[str, object]:
        parameters = self.settings.parameters
        return dict(parameters.extra or {}) if parameters is not None else {}
