"""The choice-is-one / choice-is-two query models of the reference's ``choice`` pipeline (§4.5, scenario 15).

The reference runs a PandasQuery model whose ``query`` parameter (``"choice == 1"``) filters the
request's rows: it returns the matching rows plus a ``status`` tensor, or **only** ``status`` when
no row matches, so a trigger on ``choice-is-one.outputs.choice`` fires only on a match. Evaluating
arbitrary pandas expressions would run code from a model's parameters, so ``ChoiceQuery`` accepts
one form only, ``<tensor> == <integer>``, read from the named INT32/INT64 tensor (one value per
row) and ignoring the request's other tensors. A match answers the matching values under the
tensor's name plus ``status: ["row satisfied <query>"]``; no match answers only
``status: ["no rows satisfied <query>"]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes.tensors import InvalidTensor, decode, output

QUERY_DATATYPES = ("INT32", "INT64")
_QUERY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]{0,127})\s*==\s*(-?\d{1,18})\s*")


@dataclass(frozen=True, slots=True)
class Query:
    """``<tensor> == <value>``: which rows of one tensor a ChoiceQuery keeps."""

    tensor: str
    value: int

    @classmethod
    def parse(cls, model: str, text: object) -> Query:
        match = _QUERY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise MLServerError(
                f"model {model}: parameter query must read '<tensor> == <integer>' (e.g. 'choice == 1'), "
                f"got {text!r}"
            )
        return cls(match.group(1), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.tensor} == {self.value}"


class ChoiceQuery(MLModel):
    """Keeps the rows of one integer tensor equal to a value; answers only ``status`` if none is."""

    async def load(self) -> bool:
        extra = self.settings.parameters.extra if self.settings.parameters is not None else None
        self._query = Query.parse(self.name, (extra or {}).get("query"))
        self.ready = True
        return self.ready

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        query = self._query
        found = [tensor for tensor in payload.inputs if tensor.name == query.tensor]
        if len(found) != 1:
            given = [tensor.name for tensor in payload.inputs]
            raise InvalidTensor(
                f"model {self.name}: the query {query} needs exactly one input {query.tensor!r}, got {given}"
            )
        tensor = found[0]
        if (
            tensor.datatype not in QUERY_DATATYPES
            or len(tensor.shape) not in (1, 2)
            or (len(tensor.shape) == 2 and tensor.shape[1] != 1)
        ):
            raise InvalidTensor(
                f"model {self.name}: input {tensor.name!r} must be INT32 or INT64 of shape [rows] or "
                f"[rows, 1], got {tensor.datatype} {list(tensor.shape)}"
            )
        rows = decode(self.name, tensor).reshape(-1)
        matching = rows[rows == query.value]
        outputs = []
        if matching.size:
            outputs.append(output(tensor.name, tensor.datatype, matching))
            status = f"row satisfied {query}"
        else:
            status = f"no rows satisfied {query}"
        outputs.append(StringCodec.encode_output(name="status", payload=[status]))
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)
