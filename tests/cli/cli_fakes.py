"""Hand-written fakes: real grpc.aio and aiohttp servers on ephemeral loopback ports that record
what they receive and answer from canned data."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.v2_dataplane import v2_dataplane_pb2, v2_dataplane_pb2_grpc
from cli.main import parse_args, run

ModelState = scheduler_pb2.ModelStatus.ModelState


def model_status(
    name: str, state: str, *, version: int = 1, replicas: int = 1, server: str = "mlserver", reason: str = ""
) -> scheduler_pb2.ModelStatusResponse:
    available = replicas if state == "ModelAvailable" else 0
    return scheduler_pb2.ModelStatusResponse(
        modelName=name,
        versions=[
            scheduler_pb2.ModelVersionStatus(
                version=version,
                serverName=server,
                state=scheduler_pb2.ModelStatus(
                    state=ModelState.Value(state), availableReplicas=available, reason=reason
                ),
                modelDefn=scheduler_pb2.Model(
                    meta=scheduler_pb2.MetaData(name=name),
                    deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=replicas),
                ),
            )
        ],
    )


def experiment_status(
    name: str, *, active: bool = True, candidates: bool = True, mirror: bool = True, description: str = ""
) -> scheduler_pb2.ExperimentStatusResponse:
    return scheduler_pb2.ExperimentStatusResponse(
        experimentName=name,
        active=active,
        candidatesReady=candidates,
        mirrorReady=mirror,
        statusDescription=description or ("experiment active" if active else "candidate iris2 not ready"),
    )


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc, unused-ignore]
    """Records every request; ModelStatus answers from ``models``, consuming one status per call
    until the last, which then repeats (a model progressing towards a state). Experiments work the
    same way from ``experiments``; StartExperiment adds an active one unless it is already there
    (a test may queue statuses first), StopExperiment removes it."""

    def __init__(self) -> None:
        self.requests: list[Message] = []
        self.models: dict[str, list[scheduler_pb2.ModelStatusResponse]] = {}
        self.servers: list[scheduler_pb2.ServerStatusResponse] = []
        self.load_error: tuple[grpc.StatusCode, str] | None = None
        self.experiments: dict[str, list[scheduler_pb2.ExperimentStatusResponse]] = {}
        self.start_error: tuple[grpc.StatusCode, str] | None = None
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server()
        scheduler_pb2_grpc.add_SchedulerServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    def of_type(self, kind: type[Message]) -> list[Any]:
        return [request for request in self.requests if isinstance(request, kind)]

    async def LoadModel(self, request: Any, context: Any) -> scheduler_pb2.LoadModelResponse:
        self.requests.append(request)
        if self.load_error is not None:
            await context.abort(*self.load_error)
        return scheduler_pb2.LoadModelResponse()

    async def UnloadModel(self, request: Any, context: Any) -> scheduler_pb2.UnloadModelResponse:
        self.requests.append(request)
        if request.model.name not in self.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model.name} not found")
        return scheduler_pb2.UnloadModelResponse()

    async def ModelStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[scheduler_pb2.ModelStatusResponse]:
        self.requests.append(request)
        if not request.HasField("model"):
            for name in sorted(self.models):
                yield self.models[name][-1]
            return
        statuses = self.models.get(request.model.name)
        if not statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model.name} not found")
            return
        yield statuses.pop(0) if len(statuses) > 1 else statuses[0]

    async def ServerStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[scheduler_pb2.ServerStatusResponse]:
        self.requests.append(request)
        for server in self.servers:
            if not request.HasField("name") or server.serverName == request.name:
                yield server

    async def StartExperiment(self, request: Any, context: Any) -> scheduler_pb2.StartExperimentResponse:
        self.requests.append(request)
        if self.start_error is not None:
            await context.abort(*self.start_error)
        name = request.experiment.name
        self.experiments.setdefault(name, [experiment_status(name)])
        return scheduler_pb2.StartExperimentResponse()

    async def StopExperiment(self, request: Any, context: Any) -> scheduler_pb2.StopExperimentResponse:
        self.requests.append(request)
        if self.experiments.pop(request.name, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"experiment {request.name} not found")
        return scheduler_pb2.StopExperimentResponse()

    async def ExperimentStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[scheduler_pb2.ExperimentStatusResponse]:
        self.requests.append(request)
        if not request.HasField("name") or not request.name:
            for name in sorted(self.experiments):
                yield self.experiments[name][-1]
            return
        statuses = self.experiments.get(request.name)
        if not statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"experiment {request.name} not found")
            return
        yield statuses.pop(0) if len(statuses) > 1 else statuses[0]

    async def SubscribeExperimentStatus(
        self, request: Any, context: Any
    ) -> AsyncIterator[scheduler_pb2.ExperimentStatusResponse]:
        self.requests.append(request)
        for name in sorted(self.experiments):
            yield self.experiments[name][-1]

    async def SchedulerStatus(self, request: Any, context: Any) -> scheduler_pb2.SchedulerStatusResponse:
        self.requests.append(request)
        return scheduler_pb2.SchedulerStatusResponse(applicationVersion="fake-1.2.3")


class FakeEnvoyRoutes:
    """Routing as real Envoy does it with meshserve's routes (xdsserver/resources.py).

    ``seldon-model`` selects a route; a route not in ``routes`` has one variant, ``<model>_1``. With
    several variants, a request whose ``x-seldon-route`` contains ``:<variant>:`` goes to that
    variant (sticky); otherwise the weights pick one, deterministically (a smooth weighted round
    robin, so 50/50 alternates). The response's ``x-seldon-route`` is exactly ``:<variant>:``:
    Envoy replaces, never appends to, what the caller sent.
    """

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[str, int]]] = {}
        self._credit: dict[str, dict[str, int]] = {}

    def choose(self, route: str, sticky: str | None) -> str:
        variants = self.routes.get(route) or [(f"{route}_1", 1)]
        if len(variants) > 1 and sticky:
            for target, _ in variants:
                if f":{target}:" in sticky:
                    return target
        credit = self._credit.setdefault(route, {})
        total = sum(weight for _, weight in variants)
        for target, weight in variants:
            credit[target] = credit.get(target, 0) + weight
        chosen = max(variants, key=lambda variant: credit[variant[0]])[0]
        credit[chosen] -= total
        return chosen


class FakeRestInference(FakeEnvoyRoutes):
    """OIP REST through "Envoy": routed by ``seldon-model`` (else the path), as FakeEnvoyRoutes."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.failing: set[str] = set()
        self.unrouted: set[str] = set()  # Envoy has no route: an empty 404
        self.address = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/models/{name}/infer", self._infer)
        app.router.add_get("/v2/models/{name}", self._metadata)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.address = f"{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _infer(self, request: web.Request) -> web.Response:
        name = request.headers.get("seldon-model") or request.match_info["name"]
        self.requests.append((request.path, dict(request.headers), await request.read()))
        if name in self.failing:
            return web.Response(status=503, text="upstream connect error")
        if name in self.unrouted:
            return web.Response(status=404)
        target = self.choose(name, request.headers.get("x-seldon-route"))
        body = {
            "model_name": target,
            "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [2]}],
        }
        return web.json_response(body, headers={"x-seldon-route": f":{target}:"})

    async def _metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.requests.append((request.path, dict(request.headers), b""))
        if name != "iris":
            return web.json_response({"error": f"model {name} not found"}, status=404)
        return web.json_response(
            {
                "name": "iris_1",
                "versions": [],
                "platform": "",
                "inputs": [{"name": "predict", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
            }
        )


class FakeGrpcInference(FakeEnvoyRoutes, v2_dataplane_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc, unused-ignore]
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[v2_dataplane_pb2.ModelInferRequest, dict[str, str]]] = []
        self.raw_metadata: list[list[tuple[str, str]]] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self._server = grpc.aio.server()
        v2_dataplane_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    async def ModelInfer(self, request: Any, context: Any) -> v2_dataplane_pb2.ModelInferResponse:
        self.raw_metadata.append([(key, value) for key, value in context.invocation_metadata()])
        metadata = {key: value for key, value in context.invocation_metadata()}
        self.requests.append((request, metadata))
        name = metadata.get("seldon-model", "")
        if name == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "model missing not found")
        if name.startswith("unrouted"):  # Envoy without a route: UNIMPLEMENTED, no message
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "")
        target = self.choose(name, metadata.get("x-seldon-route"))
        await context.send_initial_metadata([("x-seldon-route", f":{target}:")])
        context.set_trailing_metadata([("x-trailer", "done")])
        return v2_dataplane_pb2.ModelInferResponse(
            model_name=target,
            outputs=[
                v2_dataplane_pb2.ModelInferResponse.InferOutputTensor(
                    name="predict",
                    datatype="INT64",
                    shape=[1],
                    contents=v2_dataplane_pb2.InferTensorContents(int64_contents=[2]),
                )
            ],
        )


async def invoke(*argv: str) -> int:
    """Run a (non-stack) command in the test's event loop, where the fakes are serving."""
    args: argparse.Namespace = parse_args(list(argv))
    return await run(args)
