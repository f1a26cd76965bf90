"""The pipeline gateway over HTTP (V2 REST; reference port 9010).

``POST /v2/pipelines/<p>/infer`` and ``/v2/models/<p>[.pipeline]/infer`` (Envoy sends both here for
``seldon-model: <p>.pipeline``); ``GET …/ready`` answers 200 only when the pipeline is servable
(Creating, Ready or Rebalancing; decision 0022) with its models ready, else 503 (404 when it is
not loaded here). A response is ``{"model_name": "", "outputs": [...]}``: ``model_name`` is empty
and ``model_version`` absent as the reference answers (§6.4, scenarios 1 and 30); the request's
``id`` and ``parameters`` (e.g. ``mlserver infer``'s ``batch_index``) are echoed when it had them,
as the reference was observed to do. Headers are ``x-request-id``, ``x-pipeline-version`` and
``x-seldon-route`` (the models that answered). An async request is answered 202
``{"id": "<request id>"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from apis.names import REQUEST_ID_HEADER, ROUTE_HEADER
from pipelines.engine.errors import BadRequest, failure
from pipelines.engine.gateway import Gateway, pipeline_name
from pipelines.json_body import dumps, loads
from pipelines.tensors import message_from_json, message_to_json

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_METRIC_CHILDREN = 4_096  # label sets kept resolved (prometheus keeps every series anyway)
VERSION_HEADER = "x-pipeline-version"


class Metrics:
    """The gateway's request counter and latency histogram (the reference's names).

    A series' child is resolved once and kept: ``labels()`` costs a lock and a tuple per call,
    twice per request.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        labels = ["code", "method_type", "pipeline", "server"]
        self.total = Counter(
            "seldon_pipeline_infer", "Pipeline inference requests", labels, registry=registry
        )
        self.total_seconds = Counter(
            "seldon_pipeline_infer_seconds", "Pipeline inference time, summed", labels, registry=registry
        )
        self.seconds = Histogram(
            "seldon_pipeline_infer_api_seconds",
            "Pipeline inference latency",
            ["method_type", "pipeline"],
            registry=registry,
        )
        self._children: dict[tuple[str, str, str], Callable[[float], None]] = {}

    def observe(self, code: str, method: str, pipeline: str, started: float) -> None:
        key = (code, method, pipeline)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= MAX_METRIC_CHILDREN:
                self._children.clear()
            total = self.total.labels(code, method, pipeline, "pipeline-gateway")
            total_seconds = self.total_seconds.labels(code, method, pipeline, "pipeline-gateway")
            histogram = self.seconds.labels(method, pipeline)

            def record(elapsed: float) -> None:
                total.inc()
                total_seconds.inc(elapsed)
                histogram.observe(elapsed)

            child = self._children[key] = record
        child(time.perf_counter() - started)


def application(gateway: Gateway, metrics: Metrics) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def infer(request: web.Request) -> web.Response:
        started = time.perf_counter()
        pipeline = "?"
        try:
            call = gateway.request(request.headers, request.match_info["name"])
            pipeline = call.pipeline
            body = _body(await request.read())
            message = message_from_json(body.get("inputs"), field="inputs")
            answer = await gateway.infer(call, message)
        except Exception as error:
            mapped = failure(error)
            if mapped is None:
                raise
            metrics.observe(str(mapped.http), "rest", pipeline, started)
            return web.json_response({"error": mapped.message}, status=mapped.http)
        headers = {REQUEST_ID_HEADER: call.request_id}
        if answer is None:
            metrics.observe("202", "rest", pipeline, started)
            return web.json_response({"id": call.request_id}, status=202, headers=headers)
        out: dict[str, Any] = {"model_name": ""}
        for echoed in ("id", "parameters"):
            if echoed in body:
                out[echoed] = body[echoed]
        out["outputs"] = message_to_json(answer.output)
        headers[VERSION_HEADER] = str(answer.version)
        if answer.routes:
            headers[ROUTE_HEADER] = " ".join(answer.routes)
        metrics.observe("200", "rest", pipeline, started)
        return web.Response(body=dumps(out), content_type="application/json", headers=headers)

    async def ready(request: web.Request) -> web.Response:
        try:
            name = pipeline_name(request.match_info["name"])
        except BadRequest as error:
            return web.json_response({"error": str(error)}, status=400)
        if name not in gateway.runner.running:
            return web.json_response({"error": f"pipeline {name} is not loaded"}, status=404)
        return web.Response(status=200 if gateway.ready(name) else 503)

    async def live(_: web.Request) -> web.Response:
        return web.Response(status=200)

    for prefix in ("/v2/pipelines/{name}", "/v2/models/{name}"):
        app.router.add_post(prefix + "/infer", infer)
        app.router.add_get(prefix + "/ready", ready)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", live)
    return app


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = loads(raw)
    except json.JSONDecodeError as error:
        raise BadRequest(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with inputs")
    if "inputs" not in body:
        raise BadRequest("the body has no inputs")
    if "id" in body and not isinstance(body["id"], str):
        raise BadRequest(f"id must be a string, got {type(body['id']).__name__}")
    if "parameters" in body and not isinstance(body["parameters"], dict):
        raise BadRequest(f"parameters must be an object, got {type(body['parameters']).__name__}")
    return body
