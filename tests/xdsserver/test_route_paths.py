"""Only the Open Inference Protocol's per-model endpoints pass the listener (issue 8, item 1).

The data-plane listener's RBAC filter allows the REST paths by one ``safe_regex`` (RE2, matched
against the whole path without its query string) and the gRPC methods by exact path; the pattern
uses only syntax on which RE2 and Python's ``re`` agree, so ``re.fullmatch`` stands in for Envoy
here (tests/e2e/test_hostile_input.py checks the same through a real Envoy).
"""

from __future__ import annotations

import re

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from xdsserver import resources
from xdsserver.listener import data_plane_listener, inference_only

ROUTE = Route("iris", (Split("iris_1", WEIGHT_SCALE, (Endpoint("127.0.0.1", 8080, 9500),)),))


def _permissions() -> list[str]:
    """The allow-list as it reaches Envoy: REST regex first, then the exact gRPC paths."""
    policy = inference_only().rules.policies["inference-only"]
    found: list[str] = []
    for permission in policy.permissions:
        matcher = permission.url_path.path
        found.append(matcher.safe_regex.regex if matcher.HasField("safe_regex") else matcher.exact)
    return found


def _rest() -> str:
    return _permissions()[0]


def _grpc() -> str:
    """The exact gRPC paths as one alternation, so the tests read like the REST ones."""
    return "|".join(re.escape(path) for path in _permissions()[1:])


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


def test_the_listener_refuses_everything_else_before_any_route() -> None:
    listener = data_plane_listener(address="127.0.0.1", port=9000, lua_code="")
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.http_filters[0].name == "envoy.filters.http.rbac"
    assert manager.normalize_path.value and manager.merge_slashes
    [mapper] = manager.local_reply_config.mappers
    assert mapper.status_code.value == 404  # RBAC's 403 reads as "no such endpoint"


def test_every_route_of_a_split_stays_under_the_oip_prefixes() -> None:
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
        assert route.match.prefix in (resources.REST_PREFIX, resources.GRPC_PREFIX)
