"""The choice-is-one / choice-is-two query models of the reference's ``choice`` pipeline (§4.5, scenario 15).

The reference runs a PandasQuery model whose ``query`` parameter (``"choice == 1"``) filters the
request's rows: it returns the matching rows plus a ``status`` tensor, or **only** ``status`` when
no row matches, so a trigger on ``choice-is-one.outputs.choice`` fires only on a match. Evaluating
any pandas expression would run code from a model's parameters, so ``ChoiceQuery`` accepts one form
only, ``<tensor> == <integer>`` (:class:`samples.runtimes.examples.Query`), read from the named
INT32/INT64 tensor (one value per row), and ignores the request's other tensors.
"""

from __future__ import annotations

from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from samples.runtimes.examples import Query
from samples.runtimes.serving import Ready, as_mlserver_errors, encode, respond


class ChoiceQuery(Ready):
    """Answers the rows equal to the query's value plus ``status``, or only ``status`` if none is."""

    async def load(self) -> bool:
        with as_mlserver_errors():
            self._query = Query.parse(self.name, self.extra().get("query"))
        return await super().load()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            kept = self._query.matching(self.name, payload.inputs)
        outputs: list[ResponseOutput] = [] if kept is None else [encode(kept)]
        status = f"row satisfied {self._query}" if kept is not None else f"no rows satisfied {self._query}"
        outputs.append(StringCodec.encode_output(name="status", payload=[status]))
        return respond(self, outputs)
