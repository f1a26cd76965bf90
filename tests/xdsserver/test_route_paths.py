"""Only the Open Inference Protocol's per-model endpoints match a model's routes (issue 8, item 1).

Envoy matches ``safe_regex`` (RE2) against the whole path without its query string; these patterns
use only syntax on which RE2 and Python's ``re`` agree, so ``re.fullmatch`` stands in for Envoy here
(tests/e2e/test_hostile_input.py checks the same through a real Envoy).
"""

from __future__ import annotations

import re

import pytest

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from xdsserver import resources

ROUTE = Route("iris", (Split("iris_1", WEIGHT_SCALE, (Endpoint("127.0.0.1", 8080, 9500),)),))


def _rest() -> str:
    return str(
        resources.scope_for(ROUTE).route_configuration.virtual_hosts[0].routes[0].match.safe_regex.regex
    )


def _grpc() -> str:
    return str(
        resources.scope_for(ROUTE).route_configuration.virtual_hosts[0].routes[1].match.safe_regex.regex
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/iris/infer",
        "/v2/models/iris/ready",
        "/v2/models/iris",
        "/v2/models/iris/versions/1/infer",
        "/v2/models/iris/versions/1/ready",
        "/v2/models/iris/versions/1",
        "/v2/models/anything/infer",  # the header chose the model; the segment is rewritten
    ],
)
def test_oip_model_paths_match_the_rest_route(path: str) -> None:
    assert re.fullmatch(_rest(), path)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/repository/models/iris_1/unload",
        "/v2/repository/models/iris_1/load",
        "/v2/repository/index",
        "/v2",
        "/v2/",
        "/v2/models",
        "/v2/models/",
        "/v2/models/iris/",
        "/v2/models/iris/infer/",
        "/v2/models/iris/unload",
        "/v2/models/iris/infer/../../repository/models/iris_1/unload",
        "/v2/models/iris/versions/1/../../../repository/index",
        "/v2/health/live",
        "/metrics",
        "/",
        "/inference.GRPCInferenceService/ModelInfer",
        "/v2/models/iris/infer\n",
    ],
)
def test_everything_else_misses_the_rest_route(path: str) -> None:
    assert not re.fullmatch(_rest(), path)


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady"])
def test_inference_methods_match_the_grpc_route(method: str) -> None:
    assert re.fullmatch(_grpc(), f"/inference.GRPCInferenceService/{method}")


@pytest.mark.parametrize(
    "path",
    [
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.GRPCInferenceService/ServerMetadata",
        "/inference.GRPCInferenceService/ModelInferX",
        "/inference.GRPCInferenceService/",
        "/inference.GRPCInferenceService",
        "/inferenceXGRPCInferenceService/ModelInfer",  # the dot is literal
        "/v2/models/iris/infer",
    ],
)
def test_other_grpc_methods_miss_the_grpc_route(path: str) -> None:
    assert not re.fullmatch(_grpc(), path)


def test_every_route_of_a_split_is_restricted() -> None:
    split = Route(
        "iris",
        (
            Split("iris_1", WEIGHT_SCALE // 2, (Endpoint("127.0.0.1", 8080, 9500),)),
            Split("iris_2", WEIGHT_SCALE // 2, (Endpoint("127.0.0.1", 8080, 9500),)),
        ),
    )
    routes = resources.scope_for(split).route_configuration.virtual_hosts[0].routes
    assert len(routes) == 8
    for route in routes:
        assert route.match.WhichOneof("path_specifier") == "safe_regex"
        assert route.match.safe_regex.regex in (resources.REST_PATH, resources.GRPC_PATH)
