"""The per-model scopes of Envoy's routes, built with xds-protos (upb; see docs/decisions).

Shape (see docs/architecture.md): the listener (xdsserver/listener.py) finds a request's scope by
its ``seldon-model`` header; one scope per model (``ScopedRouteConfiguration`` named after the
model) with its routes inline, sent to its versions' clusters (xdsserver/clusters.py: per replica
set, or the version's own). Each route carries ``stat_prefix`` ``<model>_<version>_http``
(``_grpc``), so Envoy's request stats stay per model version.

Version splits use cumulative ``runtime_fraction`` matches instead of weighted clusters: Envoy draws
one random value per request and tests the routes in order, so route *i* takes the slice
``[cum(i-1), cum(i))``. Unlike a weighted cluster, each route can then carry its own path rewrite
and metadata (the versioned name the gRPC body rewrite needs).
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import duration_pb2, struct_pb2, wrappers_pb2

from apis.names import (
    INTERNAL_MODEL_HEADER,
    MODEL_HEADER,
    PIPELINE_SUFFIX,
    RETRY_ELSEWHERE_HEADER,
    ROUTE_HEADER,
)
from apis.routing import WEIGHT_SCALE, Endpoint, MirrorPolicy, Route, Split
from xdsserver.clusters import LOOPBACK_CLUSTER, split_cluster_names
from xdsserver.listener import GRPC_SERVICE, LUA_FILTER

GRPC_NOT_FOUND = 5  # grpc-status a model server answers for a model it does not hold
REST_PREFIX, GRPC_PREFIX = "/v2/models/", GRPC_SERVICE + "/"
PIPELINE_PREFIX = "/v2/pipelines/"  # only on ``<p>.pipeline`` routes (to the pipeline gateway)
# Matches the model (and optional version) segment of an OIP path, to put the versioned name there.
_MODEL_PATH = r"^/v2/models/[^/]+(/versions/[^/]+)?"
_LUA_OFF = lua_pb2.LuaPerRoute(disabled=True)


def scope_for(route: Route) -> scoped_route_pb2.ScopedRouteConfiguration:
    """The model's scope: key = its ``seldon-model`` value, routes inline."""
    if (
        len(route.splits) == 1
        and route.mirror is None
        and not route.splits[0].target.endswith(PIPELINE_SUFFIX)
    ):
        return _one_target_scope(route.name, route.splits[0])
    return _built_scope(route)


def _one_target_scope(name: str, split: Split) -> scoped_route_pb2.ScopedRouteConfiguration:
    """A scope of one target (nearly every model's): :data:`_ONE_TARGET` copied and its names
    filled in. Building it field by field took about 26 µs, a copy about 7 µs (one per model in a
    batch of loads); tests check both ways build the same scope."""
    target = split.target
    http_cluster, grpc_cluster = split_cluster_names(split)
    scope = scoped_route_pb2.ScopedRouteConfiguration()
    scope.CopyFrom(_ONE_TARGET)
    scope.name = scope.key.fragments[0].string_key = name
    scope.route_configuration.name = f"model_{name}"
    host = scope.route_configuration.virtual_hosts[0]
    rest, grpc = host.routes
    rest.name, rest.stat_prefix = name + "_http", _stat_prefix(target, "_http")
    rest.route.cluster = http_cluster
    rest.route.regex_rewrite.substitution = REST_PREFIX + target
    grpc.name, grpc.stat_prefix = name + "_grpc", _stat_prefix(target, "_grpc")
    grpc.route.cluster = grpc_cluster
    grpc.metadata.filter_metadata[LUA_FILTER].fields["internal_model"].string_value = target
    host.request_headers_to_add[0].header.value = target
    host.response_headers_to_add[0].header.value = f":{target}:"
    return scope


def _built_scope(route: Route) -> scoped_route_pb2.ScopedRouteConfiguration:
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
        stat_prefix=_stat_prefix(split.target, suffix),
        match=match,
        route=action,
    )
    if len(route.splits) > 1:
        _name_target(entry, split.target)
    return entry


def _stat_prefix(target: str, suffix: str) -> str:
    """Per-version request stats (``vhost.seldon_service.route.<target>_http.*``), whichever
    cluster serves it; a pipeline's dot would split the stat name, so it becomes "_"."""
    return target.replace(".", "_") + suffix


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


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value))


def _header_contains(name: str, value: str) -> route_components_pb2.HeaderMatcher:
    return route_components_pb2.HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(contains=value)
    )


# The shape every one-target scope shares, built the general way; _one_target_scope fills in names.
_ONE_TARGET = _built_scope(Route("template", (Split("template_1", WEIGHT_SCALE, (Endpoint("", 0, 0),)),)))
