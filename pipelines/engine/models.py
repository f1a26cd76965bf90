"""Calls a step's model through Envoy, as every other caller does (routes, experiments, retries apply).

REST (``POST /v2/models/<m>/infer``, ``seldon-model: <m>``) on one keep-alive session: the engine
holds tensors as OIP JSON, so REST costs no conversion. The request's propagated headers
(``x-request-id``, other ``x-*``, ``traceparent``; not ``x-seldon-route``, which would pin the
call to a previous model's variant) go along; the answer's ``x-seldon-route`` is collected so the
pipeline's response can list every model that served it.

A failed call raises :class:`ModelCallFailed` saying what the model (or Envoy) answered and whether
the caller's data was at fault (4xx), the model is not there (no route, not loaded) or it broke.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

import aiohttp
from yarl import URL

from apis.kafka import propagated
from apis.names import MODEL_HEADER, ROUTE_HEADER
from pipelines.json_body import dumps, loads
from pipelines.tensors import InvalidTensor, Message, message_from_json, message_to_json

MAX_ERROR_BODY = 1_024  # of a model's error answer, quoted in the pipeline's error
MAX_HEADER_VALUE = 8_192
MAX_CACHED_URLS = 1_024  # parsed model URLs kept (parsing one costs as much as JSON-encoding a request)
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


class Fault(StrEnum):
    CALLER = "caller"  # the model refused the data (HTTP 400/422)
    MISSING = "missing"  # no route, model not loaded or not ready (404/503, connection refused)
    MODEL = "model"  # the model broke or answered nonsense


class ModelCallFailed(Exception):
    def __init__(self, model: str, fault: Fault, message: str) -> None:
        super().__init__(message)
        self.model = model
        self.fault = fault


class EnvoyModels:
    """Model calls of every run (each run wraps :meth:`call` as its ModelCaller): one HTTP session."""

    def __init__(self, host: str, port: int, *, timeout: float, connections: int) -> None:
        self._base = f"http://{host}:{port}"
        self._urls: dict[str, URL] = {}
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=connections),
            # No Accept-Encoding either: MLServer gzips bodies over 1 KB when asked, and the answer is
            # read as it comes (auto_decompress off).
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),  # Envoy and models set none; a jar costs per request
            auto_decompress=False,  # the engine asks for no encoding; a body it cannot read is an error
        )

    async def close(self) -> None:
        await self._http.close()

    async def call(self, model: str, tensors: Message, headers: Mapping[str, str]) -> tuple[Message, str]:
        """The model's output tensors and the ``x-seldon-route`` it answered with ("" if none)."""
        outgoing = {k: v for k, v in headers.items() if _forwarded(k, v)}
        outgoing[MODEL_HEADER] = model
        outgoing["content-type"] = "application/json"
        try:
            body = dumps({"inputs": message_to_json(tensors)})
        except ValueError as error:
            raise ModelCallFailed(model, Fault.CALLER, f"model {model}: {error}") from error
        try:
            async with self._http.post(self._url(model), data=body, headers=outgoing) as answer:
                raw = await answer.read()
                route = answer.headers.get(ROUTE_HEADER)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ModelCallFailed(
                model, Fault.MISSING, f"model {model} could not be reached through Envoy: {error!r}"
            ) from error
        if status != 200:
            text = raw[:MAX_ERROR_BODY].decode(errors="replace")
            fault = (
                Fault.CALLER
                if status in (400, 422)
                else Fault.MISSING
                if status in (404, 503)
                else Fault.MODEL
            )
            raise ModelCallFailed(model, fault, f"model {model} answered HTTP {status}: {text}")
        try:
            outputs = loads(raw).get("outputs", [])
            return message_from_json(outputs, field="outputs"), route or ""
        except (ValueError, AttributeError, InvalidTensor) as error:
            raise ModelCallFailed(
                model, Fault.MODEL, f"model {model} answered a malformed response: {error}"
            ) from error

    def _url(self, model: str) -> URL:
        url = self._urls.get(model)
        if url is None:
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            url = self._urls[model] = URL(f"{self._base}/v2/models/{model}/infer")
        return url


def _forwarded(name: str, value: str) -> bool:
    return (
        propagated(name)
        and name != ROUTE_HEADER
        and _HEADER_NAME.fullmatch(name) is not None
        and len(value) <= MAX_HEADER_VALUE
        and _HEADER_VALUE.fullmatch(value) is not None
    )
