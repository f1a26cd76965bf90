"""A black-box explainer standing in for Seldon's alibi-explain runtime (seldon-pipelines.md §13
scenario 35, an asynchronous explainer on a pipeline).

It explains whatever answers at its ``infer_uri``: a model or a pipeline reached through Envoy,
written into its settings by the agent from ``spec.explainer.modelRef`` / ``pipelineRef``, as
Seldon's agent does. The method is occlusion: each element of the one input tensor is set to zero
in turn, and its importance is how far the outputs moved (the sum of absolute differences).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes.examples import importances, occluded
from samples.runtimes.serving import Ready, as_mlserver_errors, respond
from samples.runtimes.tensors import InvalidTensor, datatype_of, decode

MAX_OCCLUDED = 64  # one call per element: a bigger input would be a request storm
CALL_TIMEOUT_S = 10.0


class OcclusionExplainer(Ready):
    """Explains the model or pipeline at ``parameters.extra.infer_uri`` by occlusion."""

    async def load(self) -> bool:
        uri = self.extra().get("infer_uri")
        if not isinstance(uri, str) or not uri:
            raise MLServerError("no infer_uri: an explainer needs spec.explainer.modelRef or pipelineRef")
        self._uri = uri
        self._session: aiohttp.ClientSession | None = None
        return await super().load()

    async def unload(self) -> bool:
        if self._session is not None:
            await self._session.close()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        with as_mlserver_errors():
            if len(payload.inputs) != 1:
                raise InvalidTensor(
                    f"model {self.name}: explains one input tensor, got {len(payload.inputs)}"
                )
            [tensor] = payload.inputs
            x = decode(self.name, tensor)
            if x.size > MAX_OCCLUDED:
                raise InvalidTensor(
                    f"model {self.name}: {x.size} elements; it explains at most {MAX_OCCLUDED}"
                )
            name, datatype = tensor.name, datatype_of(tensor)
            baseline = await self._call(name, datatype, x)
            answers = [await self._call(name, datatype, variant) for variant in occluded(x)]
            return respond(self, [("explanation", "FP32", importances(baseline, answers, x.shape))])

    async def _call(self, name: str, datatype: str, x: np.ndarray) -> np.ndarray:
        """The explained model's outputs for ``x``, flattened into one array."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))
        body = {
            "inputs": [
                {"name": name, "datatype": datatype, "shape": list(x.shape), "data": x.reshape(-1).tolist()}
            ]
        }
        try:
            async with self._session.post(self._uri, json=body) as response:
                answer: Any = await response.json(content_type=None)
                if response.status != 200:
                    raise MLServerError(f"{self._uri} answered {response.status}: {answer}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise MLServerError(f"calling {self._uri} failed: {exc}") from exc
        outputs = answer.get("outputs") if isinstance(answer, dict) else None
        if not outputs:
            raise MLServerError(f"{self._uri} answered no outputs")
        return np.concatenate([np.asarray(out["data"], dtype=np.float64).reshape(-1) for out in outputs])
