"""Envoy bootstraps the benchmarks need besides meshserve's own: the static floor and a tiny upstream.

Both are plain static configurations (no xDS), written as JSON, run by the same Envoy binary and
flags as meshserve's Envoy (``ENVOY_FLAGS``), so the only difference measured is the configuration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from xdsserver import listener

ENVOY_CONCURRENCY = 1
"""Worker threads for every Envoy in the benchmarks (the machine has few cores; equal for all)."""


def envoy_argv(binary: str, config: Path, base_id: int) -> list[str]:
    return [
        binary,
        "-c",
        str(config),
        "--concurrency",
        str(ENVOY_CONCURRENCY),
        "--log-level",
        "warning",
        "--base-id",
        str(base_id),
    ]


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(routes: list[dict[str, Any]], access_log: Path | None = None) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "bench",
            "codec_type": "AUTO",
            "route_config": {
                "name": "bench",
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
        },
    }
    if access_log is not None:  # the same log as meshserve's listener writes (bench/envoy_times.py)
        manager["typed_config"]["access_log"] = [json_format.MessageToDict(listener.access_log(access_log))]
    return manager


def _cluster(name: str, port: int, *, http2: bool) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def _bootstrap(
    admin_port: int,
    listener_port: int,
    routes: list[dict[str, Any]],
    clusters: list[Any],
    access_log: Path | None = None,
) -> Any:
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": _address(listener_port),
                    "filter_chains": [{"filters": [_hcm(routes, access_log)]}],
                }
            ],
            "clusters": clusters,
        },
    }


def write_static_proxy(
    path: Path,
    *,
    admin_port: int,
    port: int,
    http_upstream: int,
    grpc_upstream: int,
    access_log: Path | None = None,
) -> Path:
    """The proxy floor: one listener, REST to MLServer's HTTP port, gRPC (HTTP/2) to its gRPC port;
    with ``access_log``, meshserve's access log written there."""
    routes = [
        {
            "match": {"prefix": "/inference.GRPCInferenceService"},
            "route": {"cluster": "mlserver_grpc", "timeout": "0s"},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "mlserver_http", "timeout": "0s"}},
    ]
    clusters = [
        _cluster("mlserver_http", http_upstream, http2=False),
        _cluster("mlserver_grpc", grpc_upstream, http2=True),
    ]
    path.write_text(json.dumps(_bootstrap(admin_port, port, routes, clusters, access_log), indent=1))
    return path


def write_direct_response(path: Path, *, admin_port: int, port: int) -> Path:
    """A tiny upstream: answers every request 200 with a small JSON body (HTTP/1.1 and h2c)."""
    routes = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": '{"outputs":[]}'}},
            "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
        }
    ]
    path.write_text(json.dumps(_bootstrap(admin_port, port, routes, []), indent=1))
    return path
