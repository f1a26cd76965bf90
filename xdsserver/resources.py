"""Envoy resources for meshserve's routes, built with xds-protos (upb; see docs/decisions).

Shape (see docs/architecture.md):
- listener ``seldon_http``: one HTTP connection manager (HTTP/1.1, h2c and gRPC on one port) with
  *scoped routes* keyed on the ``seldon-model`` header, so a request finds its model's routes by
  hash lookup instead of scanning every model's routes, and a model change touches one resource;
- one scope per model (``ScopedRouteConfiguration`` named after the model) with its routes inline;
- clusters per replica set, ``replicas_h<digest>_http`` and ``_grpc`` (HTTP/2), least-request
  balancing, endpoints = those model server replicas, shared by every model version placed on
  exactly them; a version whose load Envoy reports (``Split.own_clusters``: its model can
  autoscale) has its own, ``<model>_<version>_http`` and ``_grpc``
  (docs/decisions/0008). Either way each route carries ``stat_prefix`` ``<model>_<version>_http``
  (``_grpc``), so Envoy's request stats stay per model version.

Version splits use cumulative ``runtime_fraction`` matches instead of weighted clusters: Envoy draws
one random value per request and tests the routes in order, so route *i* takes the slice
``[cum(i-1), cum(i))``. Unlike a weighted cluster, each route can then carry its own path rewrite
and metadata (the versioned name the gRPC body rewrite needs).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from apis.names import (
    INTERNAL_MODEL_HEADER,
    MODEL_HEADER,
    PIPELINE_SUFFIX,
    RETRY_ELSEWHERE_HEADER,
    ROUTE_HEADER,
)
from apis.routing import Endpoint, MirrorPolicy, Route, Split

LISTENER_NAME = "seldon_http"
LUA_FILTER = "envoy.filters.http.lua"
# Mirrored copies re-enter the data-plane listener through these (``_http`` / ``_grpc``).
LOOPBACK_CLUSTER = "meshserve_loopback"
# Only the Open Inference Protocol's per-model endpoints reach a model server: REST infer, ready and
# metadata (`/v2/models/<m>[/versions/<v>][/infer|/ready]`) and these gRPC methods. Anything else
# (the repository API that loads and unloads models behind the scheduler's back, server-wide
# endpoints) is refused once, by an RBAC filter on the listener, answered as HTTP 404 (gRPC
# `UNIMPLEMENTED`). Checking there, not in every model's routes, keeps one compiled regex in Envoy
# instead of two per model version (~14 KB each; docs/decisions/0008). Envoy matches the whole
# path without its query string.
GRPC_SERVICE = "/inference.GRPCInferenceService"
GRPC_NOT_FOUND = 5  # grpc-status a model server answers for a model it does not hold
GRPC_METHODS = ("ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady")
GRPC_PATHS = tuple(f"{GRPC_SERVICE}/{method}" for method in GRPC_METHODS)
REST_PATH = r"/v2/models/[^/]+(?:/versions/[^/]+)?(?:/infer|/ready)?|/v2/pipelines/[^/]+(?:/infer|/ready)?"
REST_PREFIX, GRPC_PREFIX = "/v2/models/", GRPC_SERVICE + "/"
PIPELINE_PREFIX = "/v2/pipelines/"  # only on ``<p>.pipeline`` routes (to the pipeline gateway)
NOT_INFERENCE = (
    "not an inference endpoint: only /v2/models/<model>[/versions/<v>][/infer|/ready] and "
    "/v2/pipelines/<pipeline>[/infer|/ready] are served"
)
# Matches the model (and optional version) segment of an OIP path, to put the versioned name there.
_MODEL_PATH = r"^/v2/models/[^/]+(/versions/[^/]+)?"
_LUA_OFF = lua_pb2.LuaPerRoute(disabled=True)
_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


# Limits of a cluster every model on a replica set shares (Envoy's defaults, 1,024 requests and
# 3 concurrent retries, were sized for one model version per cluster).
SHARED_MAX_REQUESTS = 65_536
SHARED_MAX_RETRIES = 1_024
_SHARED = "replicas_h"  # + hex digest: never a versioned name (<model>_<digits>)


def cluster_names(target: str) -> tuple[str, str]:
    return f"{target}_http", f"{target}_grpc"


def replica_set(endpoints: Sequence[Endpoint]) -> str:
    """The shared clusters' stem for an endpoint set: a digest of its sorted endpoints, so the same
    replicas always give the same clusters whatever the order or the model."""
    key = "|".join(sorted(repr(e) for e in set(endpoints)))
    return _SHARED + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def split_cluster_names(split: Split) -> tuple[str, str]:
    """The (REST, gRPC) clusters a split's routes send to: its own or its replica set's."""
    return cluster_names(split.target if split.own_clusters else replica_set(split.endpoints))


def split_clusters(split: Split) -> dict[str, cluster_pb2.Cluster]:
    if split.own_clusters:
        return clusters_for(split.target, split.endpoints)
    return clusters_for(replica_set(split.endpoints), split.endpoints, shared=True)


def clusters_for(
    stem: str, endpoints: Sequence[Endpoint], *, shared: bool = False
) -> dict[str, cluster_pb2.Cluster]:
    """Both clusters ``<stem>_http`` and ``<stem>_grpc``: model servers at priority 0, their agents'
    reload listeners (if any) at priority 1, tried only on a retry after a model server's "no such
    model" (decision 0014)."""
    http_name, grpc_name = cluster_names(stem)
    http_reload = [(e.host, e.reload_http_port) for e in endpoints if e.reload_http_port]
    grpc_reload = [(e.host, e.reload_grpc_port) for e in endpoints if e.reload_grpc_port]
    http_addresses = [(e.host, e.http_port) for e in endpoints]
    grpc_addresses = [(e.host, e.grpc_port) for e in endpoints]
    return {
        http_name: _cluster(http_name, http_addresses, http2=False, reload=http_reload, shared=shared),
        grpc_name: _cluster(grpc_name, grpc_addresses, http2=True, reload=grpc_reload, shared=shared),
    }


def _cluster(
    name: str,
    addresses: Sequence[tuple[str, int]],
    *,
    http2: bool,
    reload: Sequence[tuple[str, int]] = (),
    shared: bool = False,
) -> cluster_pb2.Cluster:
    static = all(_is_ip(host) for host, _ in [*addresses, *reload])
    priorities = [addresses, reload] if reload else [addresses]
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if static else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=5),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
        dns_lookup_family=cluster_pb2.Cluster.V4_ONLY,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    priority=priority,
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=_address(host, port))
                        )
                        for host, port in group
                    ],
                )
                for priority, group in enumerate(priorities)
            ],
        ),
    )
    if shared:
        limits = cluster.circuit_breakers.thresholds.add()
        for limit in (limits.max_connections, limits.max_pending_requests, limits.max_requests):
            limit.value = SHARED_MAX_REQUESTS
        limits.max_retries.value = SHARED_MAX_RETRIES
    if http2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        cluster.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ].Pack(options)
    return cluster


def scope_for(route: Route) -> scoped_route_pb2.ScopedRouteConfiguration:
    """The model's scope: key = its ``seldon-model`` value, routes inline."""
    return scoped_route_pb2.ScopedRouteConfiguration(
        name=route.name,
        key=scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=route.name)]
        ),
        route_configuration=route_pb2.RouteConfiguration(
            name=f"model_{route.name}",
            virtual_hosts=[_virtual_host(route)],
            # Envoy may ACK a new cluster before it has warmed; an inline route table is checked
            # against warmed clusters only, and would be refused for good ("unknown cluster").
            # The publisher sends a scope only after its clusters' ACK (xdsserver/routes.py).
            validate_clusters=wrappers_pb2.BoolValue(value=False),
        ),
    )


def _virtual_host(route: Route) -> route_components_pb2.VirtualHost:
    """The scope's one virtual host. What every route of it shares is set here once, not on each
    route: Envoy builds it per route otherwise (~2 KB per model for the retry policy and ~1.5 KB
    for the header mutations; decision 0008)."""
    host = route_components_pb2.VirtualHost(
        name="seldon_service", domains=["*"], routes=_routes(route), retry_policy=_RETRY
    )
    if len(route.splits) == 1:
        # With several splits each split's routes set their own: a virtual host's removal runs
        # after a route's additions and would undo them.
        _name_target(host, route.splits[0].target)
    return host


def _name_target(holder: route_components_pb2.Route | route_components_pb2.VirtualHost, target: str) -> None:
    """Tell the upstream which target it serves (``seldon-internal-model``, a caller's own value
    dropped) and the caller which one answered (``x-seldon-route``)."""
    holder.request_headers_to_remove.append(INTERNAL_MODEL_HEADER)
    holder.request_headers_to_add.append(_header(INTERNAL_MODEL_HEADER, target))
    holder.response_headers_to_add.append(_header(ROUTE_HEADER, f":{target}:"))


def _routes(route: Route) -> list[route_components_pb2.Route]:
    routes: list[route_components_pb2.Route] = []
    if len(route.splits) > 1:
        # Sticky sessions: a caller echoing x-seldon-route keeps its version/candidate.
        for split in route.splits:
            sticky = _header_contains(ROUTE_HEADER, f":{split.target}:")
            routes += _split_routes(route, split, None, sticky)
    cumulative = 0
    for position, split in enumerate(route.splits):
        cumulative += split.weight  # millionths, which is the runtime fraction's denominator
        last = position == len(route.splits) - 1
        fraction = None if last else cumulative
        routes += _split_routes(route, split, fraction, None)
    return routes


def _split_routes(
    route: Route, split: Split, fraction: int | None, header: route_components_pb2.HeaderMatcher | None
) -> list[route_components_pb2.Route]:
    """A split's REST and gRPC routes; a pipeline's (``<p>.pipeline``: its own route, or a pipeline
    experiment's candidate) also takes ``/v2/pipelines/...``, sent on unchanged: the gateway reads
    which pipeline to run from ``seldon-internal-model``."""
    routes = [_rest_route(route, split, fraction, header), _grpc_route(route, split, fraction, header)]
    if split.target.endswith(PIPELINE_SUFFIX):
        routes.append(_rest_route(route, split, fraction, header, prefix=PIPELINE_PREFIX))
    return routes


def _rest_route(
    route: Route,
    split: Split,
    fraction: int | None,
    header: route_components_pb2.HeaderMatcher | None,
    *,
    prefix: str = REST_PREFIX,
) -> route_components_pb2.Route:
    http_cluster, _ = split_cluster_names(split)
    entry = _route_entry(route, split, prefix, "_http", fraction, header)
    if prefix != REST_PREFIX:
        entry.name = route.name + "_pipeline_http" + ("_experiment" if header is not None else "")
    entry.route.cluster = http_cluster
    # REST needs no Lua once a route matched (regex_rewrite does the renaming): skip its cost.
    # Path-only requests still run it, since before it derives seldon-model no route matches.
    entry.typed_per_filter_config[LUA_FILTER].Pack(_LUA_OFF)
    entry.route.regex_rewrite.CopyFrom(
        regex_pb2.RegexMatchAndSubstitute(
            pattern=regex_pb2.RegexMatcher(regex=_MODEL_PATH),
            substitution=f"/v2/models/{split.target}",
        )
    )
    return entry


def _grpc_route(
    route: Route,
    split: Split,
    fraction: int | None,
    header: route_components_pb2.HeaderMatcher | None,
) -> route_components_pb2.Route:
    _, grpc_cluster = split_cluster_names(split)
    entry = _route_entry(route, split, GRPC_PREFIX, "_grpc", fraction, header)
    entry.route.cluster = grpc_cluster
    # Read by envoy/seldon.lua, which rewrites model_name in the protobuf body to this name.
    fields = entry.metadata.filter_metadata[LUA_FILTER].fields
    fields["internal_model"].CopyFrom(struct_pb2.Value(string_value=split.target))
    return entry


def _route_entry(
    route: Route,
    split: Split,
    prefix: str,
    suffix: str,
    fraction: int | None,
    header: route_components_pb2.HeaderMatcher | None,
) -> route_components_pb2.Route:
    match = route_components_pb2.RouteMatch(prefix=prefix)
    if header is not None:
        match.headers.append(header)
    if fraction is not None:
        match.runtime_fraction.CopyFrom(
            base_pb2.RuntimeFractionalPercent(
                default_value=percent_pb2.FractionalPercent(
                    numerator=fraction, denominator=percent_pb2.FractionalPercent.MILLION
                )
            )
        )
    name = route.name + suffix + ("_experiment" if header is not None else "")
    # The retry policy is the virtual host's (_virtual_host).
    action = route_components_pb2.RouteAction(timeout=duration_pb2.Duration(seconds=0))
    if route.mirror is not None:
        action.request_mirror_policies.append(_mirror_policy(route.mirror, suffix))
    entry = route_components_pb2.Route(
        name=name,
        # Per-version request stats (``vhost.seldon_service.route.<target>_http.*``), whichever
        # cluster serves it; a pipeline's dot would split the stat name, so it becomes "_".
        stat_prefix=split.target.replace(".", "_") + suffix,
        match=match,
        route=action,
    )
    if len(route.splits) > 1:
        _name_target(entry, split.target)
    return entry


def _retry_policy() -> route_components_pb2.RetryPolicy:
    """Retry on another replica when one went away or does not hold the model (yet).

    Inference is a pure function of its input, so a request a dying model server dropped mid-way is
    sent again, to a host not tried before (``previous_hosts``); so is one a restarted model server
    answers "model not found" (REST 404, gRPC NOT_FOUND in a trailers-only reply) before its agent
    has reloaded the model. A replica's crash costs no request while another replica serves it.
    A retry leaves the priority already tried (``previous_priorities``): after a model server's
    "not found", an agent's reload listener (priority 1, decision 0014) answers; a cluster without
    one has a single priority, which the plugin then keeps. An agent that cannot answer either (its
    own MLServer died) says so with ``RETRY_ELSEWHERE_HEADER``; the try after it goes to a model
    server not tried before, so a replica's crash still costs no request while another serves.
    """
    policy = route_components_pb2.RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,retriable-status-codes,retriable-headers",
        num_retries=wrappers_pb2.UInt32Value(value=3),
        host_selection_retry_max_attempts=5,
        retriable_status_codes=[404],
        retriable_headers=[
            route_components_pb2.HeaderMatcher(
                name="grpc-status", string_match=string_pb2.StringMatcher(exact=str(GRPC_NOT_FOUND))
            ),
            # An agent whose own MLServer is down answers 503 / UNAVAILABLE with this header: with
            # ``previous_priorities`` the next try goes back to the model servers not tried yet.
            route_components_pb2.HeaderMatcher(name=RETRY_ELSEWHERE_HEADER, present_match=True),
        ],
    )
    policy.retry_host_predicate.add(name="envoy.retry_host_predicates.previous_hosts").typed_config.Pack(
        previous_hosts_pb2.PreviousHostsPredicate()
    )
    policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
    policy.retry_priority.typed_config.Pack(
        previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1)
    )
    return policy


_RETRY = _retry_policy()


def _mirror_policy(mirror: MirrorPolicy, suffix: str) -> route_components_pb2.RouteAction.RequestMirrorPolicy:
    """A shadow copy back into this Envoy's own listener, routed as ``seldon-model: <m>.mirror``.

    The copy leaves after this route's path and body rewrites, so it needs a routing pass of its
    own to reach the mirror model under its versioned name (docs/decisions/0010).
    """
    return route_components_pb2.RouteAction.RequestMirrorPolicy(
        cluster=LOOPBACK_CLUSTER + suffix,
        runtime_fraction=base_pb2.RuntimeFractionalPercent(
            default_value=percent_pb2.FractionalPercent(
                numerator=mirror.fraction, denominator=percent_pb2.FractionalPercent.MILLION
            )
        ),
        disable_shadow_host_suffix_append=True,
        request_headers_mutations=[
            mutation_rules_pb2.HeaderMutation(
                append=base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=MODEL_HEADER, value=mirror.route),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ),
            mutation_rules_pb2.HeaderMutation(remove=ROUTE_HEADER),
        ],
    )


def loopback_clusters(*, address: str, port: int) -> dict[str, cluster_pb2.Cluster]:
    """Clusters pointing at the data-plane listener itself, for mirrored copies (http and h2c)."""
    return {
        LOOPBACK_CLUSTER + suffix: _cluster(LOOPBACK_CLUSTER + suffix, [(address, port)], http2=http2)
        for suffix, http2 in (("_http", False), ("_grpc", True))
    }


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def _header_contains(name: str, value: str) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(contains=value)
    )


def listener(*, address: str, port: int, lua_code: str) -> listener_pb2.Listener:
    """The data-plane listener: every model, HTTP/1.1 and HTTP/2 (gRPC) on one port."""
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
    return listener_pb2.Listener(name=LISTENER_NAME, address=_address(address, port), filter_chains=[chain])


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


def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
