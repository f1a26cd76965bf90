"""Envoy resources built for routes: clusters, scopes, fractions, sticky routes, the listener."""

from __future__ import annotations

import re
from pathlib import Path

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from xdsserver import resources
from xdsserver.clusters import (
    SHARED_MAX_REQUESTS,
    SHARED_MAX_RETRIES,
    clusters_for,
    replica_set,
    split_cluster_names,
    split_clusters,
)
from xdsserver.listener import data_plane_listener

IP = Endpoint("10.0.0.1", 9000, 9500)
DNS = Endpoint("mlserver-0.svc", 9001, 9501)
_H2 = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def split(target: str, percent: int = 100, *endpoints: Endpoint, own: bool = True) -> Split:
    return Split(target, percent * WEIGHT_SCALE // 100, endpoints or (IP,), own_clusters=own)


def routes_of(route: Route) -> list[route_components_pb2.Route]:
    return list(resources.scope_for(route).route_configuration.virtual_hosts[0].routes)


def fractions(route: Route) -> list[tuple[str, int | None]]:
    """(cluster, numerator or None) of the non-sticky routes."""
    found: list[tuple[str, int | None]] = []
    for r in routes_of(route):
        if r.match.headers:
            continue
        numerator = r.match.runtime_fraction.default_value.numerator
        found.append((r.route.cluster, numerator if r.match.HasField("runtime_fraction") else None))
    return found


# -- clusters --------------------------------------------------------------------------------------


def test_each_version_gets_an_http_and_a_grpc_cluster() -> None:
    clusters = clusters_for("iris_1", [IP])
    assert set(clusters) == {"iris_1_http", "iris_1_grpc"}
    http, grpc = clusters["iris_1_http"], clusters["iris_1_grpc"]
    assert [
        e.endpoint.address.socket_address.port_value for e in http.load_assignment.endpoints[0].lb_endpoints
    ] == [9000]
    assert [
        e.endpoint.address.socket_address.port_value for e in grpc.load_assignment.endpoints[0].lb_endpoints
    ] == [9500]
    assert http.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST


def test_grpc_cluster_speaks_http2_and_http_cluster_does_not() -> None:
    clusters = clusters_for("iris_1", [IP])
    assert _H2 not in clusters["iris_1_http"].typed_extension_protocol_options
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert clusters["iris_1_grpc"].typed_extension_protocol_options[_H2].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")


def test_ip_endpoints_make_a_static_cluster_and_host_names_a_dns_one() -> None:
    assert clusters_for("m_1", [IP])["m_1_http"].type == cluster_pb2.Cluster.STATIC
    assert clusters_for("m_1", [DNS])["m_1_http"].type == cluster_pb2.Cluster.STRICT_DNS
    assert clusters_for("m_1", [IP, DNS])["m_1_grpc"].type == cluster_pb2.Cluster.STRICT_DNS


def test_a_replica_set_names_its_shared_clusters_whatever_the_order_and_never_like_a_version() -> None:
    stem = replica_set([IP, DNS])
    assert stem == replica_set([DNS, IP]) != replica_set([IP])
    assert re.fullmatch(r"replicas_h[0-9a-f]{16}", stem)  # a versioned name ends in digits after "_"
    assert split_cluster_names(split("iris_1", 100, IP, DNS, own=False)) == (
        f"{stem}_http",
        f"{stem}_grpc",
    )
    assert split_cluster_names(split("iris_1", 100, IP, DNS)) == ("iris_1_http", "iris_1_grpc")


def test_shared_clusters_raise_the_limits_every_model_on_them_shares() -> None:
    shared = split_clusters(split("iris_1", own=False))
    own = split_clusters(split("iris_1"))
    for cluster in shared.values():
        (limits,) = cluster.circuit_breakers.thresholds
        assert limits.max_requests.value == SHARED_MAX_REQUESTS
        assert limits.max_pending_requests.value == SHARED_MAX_REQUESTS
        assert limits.max_retries.value == SHARED_MAX_RETRIES
    assert not any(c.HasField("circuit_breakers") for c in own.values())  # Envoy's defaults


def test_every_route_keeps_per_version_stats_whichever_cluster_serves_it() -> None:
    for own in (True, False):
        route = Route("iris", (split("iris_2", 50, own=own), split("iris_1", 50, own=own)))
        prefixes = {(r.route.cluster.endswith("_grpc"), r.stat_prefix) for r in routes_of(route)}
        assert {p for _, p in prefixes} == {"iris_1_http", "iris_1_grpc", "iris_2_http", "iris_2_grpc"}
        assert all(grpc == prefix.endswith("_grpc") for grpc, prefix in prefixes)
    pipeline = Route("p.pipeline", (split("p.pipeline", own=False),))
    assert {r.stat_prefix for r in routes_of(pipeline)} == {"p_pipeline_http", "p_pipeline_grpc"}


# -- scopes and routes -----------------------------------------------------------------------------


def test_scope_is_keyed_on_the_model_name_with_inline_routes() -> None:
    scope = resources.scope_for(Route("iris", (split("iris_1"),)))
    assert scope.name == "iris"
    assert [f.string_key for f in scope.key.fragments] == ["iris"]
    assert scope.route_configuration.name == "model_iris"
    # Not refused while a new cluster warms after its ACK (the scope follows its clusters' ACK).
    assert scope.route_configuration.validate_clusters.value is False
    assert scope.route_configuration.HasField("validate_clusters")


def test_single_split_has_one_rest_and_one_grpc_route_without_fractions() -> None:
    route = Route("iris", (split("iris_1"),))
    assert [r.match.prefix for r in routes_of(route)] == [resources.REST_PREFIX, resources.GRPC_PREFIX]
    assert fractions(route) == [("iris_1_http", None), ("iris_1_grpc", None)]


def test_splits_use_cumulative_fractions_with_the_last_unbounded() -> None:
    route = Route("iris", (split("iris_1", 50), split("iris_2", 25), split("iris_3", 25)))
    assert fractions(route) == [
        ("iris_1_http", 500_000),
        ("iris_1_grpc", 500_000),
        ("iris_2_http", 750_000),
        ("iris_2_grpc", 750_000),
        ("iris_3_http", None),
        ("iris_3_grpc", None),
    ]
    denominators = {
        r.match.runtime_fraction.default_value.denominator
        for r in routes_of(route)
        if r.match.HasField("runtime_fraction")
    }
    assert denominators == {percent_pb2.FractionalPercent.MILLION}


def test_sticky_routes_come_first_and_only_with_several_splits() -> None:
    assert not any(r.match.headers for r in routes_of(Route("iris", (split("iris_1"),))))
    route = Route("iris", (split("iris_1", 30), split("iris_2", 70)))
    sticky = [
        (r.match.headers[0].name, r.match.headers[0].string_match.contains, r.route.cluster)
        for r in routes_of(route)[:4]
    ]
    assert sticky == [
        ("x-seldon-route", ":iris_1:", "iris_1_http"),
        ("x-seldon-route", ":iris_1:", "iris_1_grpc"),
        ("x-seldon-route", ":iris_2:", "iris_2_http"),
        ("x-seldon-route", ":iris_2:", "iris_2_grpc"),
    ]
    assert not any(r.match.HasField("runtime_fraction") for r in routes_of(route)[:4])


def test_pipeline_splits_also_take_the_pipelines_path_sticky_ones_included() -> None:
    # A pipeline experiment's route: every split is a pipeline behind the gateway, so each gets a
    # /v2/pipelines/ route too, whatever the route's own name (here the experiment endpoint).
    route = Route("ab.experiment", (split("p1.pipeline", 50), split("p2.pipeline", 50)))
    found = [
        (
            r.name,
            r.match.prefix,
            r.match.headers[0].string_match.contains if r.match.headers else "",
            r.route.cluster,
            [(h.header.key, h.header.value) for h in r.request_headers_to_add],
        )
        for r in routes_of(route)
        if r.match.prefix == "/v2/pipelines/"
    ]
    assert found == [
        (
            "ab.experiment_pipeline_http_experiment",
            "/v2/pipelines/",
            ":p1.pipeline:",
            "p1.pipeline_http",
            [("seldon-internal-model", "p1.pipeline")],
        ),
        (
            "ab.experiment_pipeline_http_experiment",
            "/v2/pipelines/",
            ":p2.pipeline:",
            "p2.pipeline_http",
            [("seldon-internal-model", "p2.pipeline")],
        ),
        (
            "ab.experiment_pipeline_http",
            "/v2/pipelines/",
            "",
            "p1.pipeline_http",
            [("seldon-internal-model", "p1.pipeline")],
        ),
        (
            "ab.experiment_pipeline_http",
            "/v2/pipelines/",
            "",
            "p2.pipeline_http",
            [("seldon-internal-model", "p2.pipeline")],
        ),
    ]
    # Model splits never do, even on a route named like a pipeline's.
    assert not any(
        r.match.prefix == "/v2/pipelines/" for r in routes_of(Route("x.pipeline", (split("iris_1"),)))
    )


def test_rest_route_rewrites_the_model_path_to_the_versioned_name() -> None:
    rest = routes_of(Route("iris", (split("iris_1"),)))[0]
    rewrite = rest.route.regex_rewrite
    assert rewrite.substitution == "/v2/models/iris_1"
    for path in ("/v2/models/iris/infer", "/v2/models/iris/versions/7/infer"):
        assert re.sub(rewrite.pattern.regex, rewrite.substitution, path) == "/v2/models/iris_1/infer"


def test_grpc_route_tells_the_lua_filter_the_internal_model() -> None:
    grpc = routes_of(Route("iris", (split("iris_1"),)))[1]
    fields = grpc.metadata.filter_metadata["envoy.filters.http.lua"].fields
    assert fields["internal_model"].string_value == "iris_1"


def named(holder: route_components_pb2.Route | route_components_pb2.VirtualHost) -> tuple[object, ...]:
    """(internal model set, removed first, route header echoed) of a route or virtual host."""
    return (
        [(h.header.key, h.header.value) for h in holder.request_headers_to_add],
        list(holder.request_headers_to_remove),
        [(h.header.key, h.header.value) for h in holder.response_headers_to_add],
    )


def test_one_target_is_named_once_on_the_virtual_host() -> None:
    host = resources.scope_for(Route("iris", (split("iris_1"),))).route_configuration.virtual_hosts[0]
    assert named(host) == (
        [("seldon-internal-model", "iris_1")],
        ["seldon-internal-model"],
        [("x-seldon-route", ":iris_1:")],
    )
    assert all(named(r) == ([], [], []) for r in host.routes)


def test_with_several_targets_each_route_names_its_own() -> None:
    route = Route("iris", (split("iris_2", 50), split("iris_1", 50)))
    host = resources.scope_for(route).route_configuration.virtual_hosts[0]
    assert named(host) == ([], [], [])
    for r in host.routes:
        target = r.stat_prefix.rsplit("_", 1)[0]
        assert named(r) == (
            [("seldon-internal-model", target)],
            ["seldon-internal-model"],
            [("x-seldon-route", f":{target}:")],
        )


def test_the_retry_policy_is_the_virtual_hosts_for_every_route() -> None:
    one, two = (split("iris_1"),), (split("iris_2", 50), split("iris_1", 50))
    for route in (Route("iris", one), Route("iris", two)):
        host = resources.scope_for(route).route_configuration.virtual_hosts[0]
        assert host.retry_policy.num_retries.value == 3 and "reset" in host.retry_policy.retry_on
        assert not any(r.route.HasField("retry_policy") for r in host.routes)


def test_listener_scopes_routes_by_the_model_header_and_runs_lua_before_the_router() -> None:
    listener = data_plane_listener(address="0.0.0.0", port=9000, lua_code="-- lua")
    assert listener.name == "seldon_http"
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    fragment = manager.scoped_routes.scope_key_builder.fragments[0]
    assert fragment.header_value_extractor.name == "seldon-model"
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.lua",
        "envoy.filters.http.router",
    ]
    assert not manager.access_log  # only when asked for


def test_the_listener_writes_an_access_log_only_where_it_is_told() -> None:
    listener = data_plane_listener(
        address="0.0.0.0", port=9000, lua_code="", access_log_path=Path("/var/log/a.log")
    )
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    (entry,) = manager.access_log
    log = file_pb2.FileAccessLog()
    assert entry.typed_config.Unpack(log)
    assert log.path == "/var/log/a.log"
    fields = dict(log.log_format.json_format.items())
    assert fields["duration_us"] == "%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%"


def test_a_one_target_scope_is_the_scope_built_field_by_field() -> None:
    """The copied template (the fast path for nearly every model) builds exactly what the general
    builder does, whatever the names, clusters and endpoints."""
    routes = [
        Route("iris", (split("iris_1"),)),
        Route("iris", (split("iris_12", 100, IP, DNS, own=False),)),
        Route("a-much-longer-model-name-0123456789", (split("a-much-longer-model-name-0123456789_7"),)),
        Route("ab.experiment", (split("iris_3", own=False),)),
        Route("iris", (split("iris_2"),)),  # the same name again: nothing is left of the one before
    ]
    for route in routes:
        assert resources.scope_for(route) == resources._built_scope(route), route
    assert resources.scope_for(routes[0]).name == "iris"
    assert resources._one_target_scope("iris", routes[-1].splits[0]) != resources.scope_for(routes[0])
