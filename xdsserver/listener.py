"""The data-plane listener ``seldon_http``: one HTTP connection manager (HTTP/1.1, h2c and gRPC on
one port) with *scoped routes* keyed on the ``seldon-model`` header, so a request finds its model's
routes by hash lookup instead of scanning every model's routes, and a model change touches one
resource (the scopes: xdsserver/resources.py). Before any route, an RBAC filter lets only inference
endpoints through. Optionally, Envoy writes one JSON line per request to an access log
(:func:`access_log`), with the time Envoy itself spent beside the model server's.
"""

from __future__ import annotations

from pathlib import Path

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from apis.names import MODEL_HEADER
from xdsserver.clusters import socket_address

LISTENER_NAME = "seldon_http"
LUA_FILTER = "envoy.filters.http.lua"
# Only the Open Inference Protocol's per-model endpoints reach a model server: REST infer, ready and
# metadata (`/v2/models/<m>[/versions/<v>][/infer|/ready]`) and these gRPC methods. Anything else
# (the repository API that loads and unloads models behind the scheduler's back, server-wide
# endpoints) is refused once, by an RBAC filter on the listener, answered as HTTP 404 (gRPC
# `UNIMPLEMENTED`). Checking there, not in every model's routes, keeps one compiled regex in Envoy
# instead of two per model version (~14 KB each; docs/decisions/0008). Envoy matches the whole
# path without its query string.
GRPC_SERVICE = "/inference.GRPCInferenceService"
GRPC_METHODS = ("ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady")
GRPC_PATHS = tuple(f"{GRPC_SERVICE}/{method}" for method in GRPC_METHODS)
REST_PATH = r"/v2/models/[^/]+(?:/versions/[^/]+)?(?:/infer|/ready)?|/v2/pipelines/[^/]+(?:/infer|/ready)?"
# One access-log line per request, JSON. Durations in microseconds: ``duration_us`` from the first
# byte received from the caller to the last byte sent back, ``upstream_us`` from the first byte sent
# to the model server to the last byte received from it; the difference is Envoy's own time.
ACCESS_LOG_FIELDS = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "model": f"%REQ({MODEL_HEADER})%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS(NUMBER)%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_us": "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%",
    "upstream_us": "%COMMON_DURATION(US_TX_BEG:US_RX_END:us)%",
}
NOT_INFERENCE = (
    "not an inference endpoint: only /v2/models/<model>[/versions/<v>][/infer|/ready] and "
    "/v2/pipelines/<pipeline>[/infer|/ready] are served"
)
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


def data_plane_listener(
    *, address: str, port: int, lua_code: str, access_log_path: Path | None = None
) -> listener_pb2.Listener:
    """The data-plane listener: every model, HTTP/1.1 and HTTP/2 (gRPC) on one port; with
    ``access_log_path``, a line per request there (:func:`access_log`)."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=hcm.HttpConnectionManager.AUTO,
        generate_request_id=wrappers_pb2.BoolValue(value=True),
        always_set_request_id_in_response=True,
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        local_reply_config=_not_found_for_refused_paths(),
        scoped_routes=hcm.ScopedRoutes(
            name="seldon_models",
            scope_key_builder=hcm.ScopedRoutes.ScopeKeyBuilder(
                fragments=[
                    hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder(
                        header_value_extractor=hcm.ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor(
                            name=MODEL_HEADER, index=0
                        )
                    )
                ]
            ),
            rds_config_source=_ADS,
            scoped_rds=hcm.ScopedRds(scoped_rds_config_source=_ADS),
        ),
    )
    if access_log_path is not None:
        manager.access_log.append(access_log(access_log_path))
    # The script clears the route cache itself, only when it derived seldon-model from the path.
    lua = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=lua_code),
        clear_route_cache=wrappers_pb2.BoolValue(value=False),
    )
    manager.http_filters.add(name="envoy.filters.http.rbac").typed_config.Pack(inference_only())
    manager.http_filters.add(name=LUA_FILTER).typed_config.Pack(lua)
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(router_pb2.Router())
    chain = listener_components_pb2.FilterChain()
    chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(manager)
    return listener_pb2.Listener(
        name=LISTENER_NAME, address=socket_address(address, port), filter_chains=[chain]
    )


def access_log(path: Path) -> accesslog_pb2.AccessLog:
    """Envoy's file access log at ``path``, one JSON object per request (:data:`ACCESS_LOG_FIELDS`).
    Envoy buffers the lines and writes them from its own thread: every ``--file-flush-interval-msec``
    (10 s by default) or once ``--file-flush-min-size-kb`` (64 KB) have gathered, and when it stops."""
    fields = struct_pb2.Struct()
    fields.update(ACCESS_LOG_FIELDS)
    log = file_pb2.FileAccessLog(
        path=str(path), log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fields)
    )
    entry = accesslog_pb2.AccessLog(name="envoy.access_loggers.file")
    entry.typed_config.Pack(log)
    return entry


def inference_only() -> rbac_filter_pb2.RBAC:
    """The listener's allow-list: OIP per-model REST paths and the inference gRPC methods."""
    permissions = [
        rbac_pb2.Permission(
            url_path=path_pb2.PathMatcher(
                path=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=REST_PATH))
            )
        ),
        *(
            rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=string_pb2.StringMatcher(exact=path)))
            for path in GRPC_PATHS
        ),
    ]
    policy = rbac_pb2.Policy(permissions=permissions, principals=[rbac_pb2.Principal(any=True)])
    return rbac_filter_pb2.RBAC(
        rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"inference-only": policy})
    )


def _not_found_for_refused_paths() -> hcm.LocalReplyConfig:
    """RBAC refuses with 403; a path that is not an inference endpoint is answered 404 instead
    (gRPC: UNIMPLEMENTED), as if it did not exist. Nothing else in this listener answers 403."""
    forbidden = accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=403, runtime_key="meshserve.refused_status"),
            )
        )
    )
    return hcm.LocalReplyConfig(
        mappers=[
            hcm.ResponseMapper(
                filter=forbidden,
                status_code=wrappers_pb2.UInt32Value(value=404),
                body=base_pb2.DataSource(inline_string=NOT_INFERENCE),
            )
        ]
    )
