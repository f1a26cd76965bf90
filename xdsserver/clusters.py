"""Envoy clusters for model server replicas, and the loopback clusters mirrored copies take.

Clusters per replica set, ``replicas_h<digest>_http`` and ``_grpc`` (HTTP/2), least-request
balancing, endpoints = those model server replicas, shared by every model version placed on exactly
them; a version whose load Envoy reports (``Split.own_clusters``: its model can autoscale) has its
own, ``<model>_<version>_http`` and ``_grpc`` (docs/decisions/0008).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2

from apis.routing import Endpoint, Split
from apis.validation import is_ip_address

# Mirrored copies re-enter the data-plane listener through these (``_http`` / ``_grpc``).
LOOPBACK_CLUSTER = "meshserve_loopback"

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
    return _replica_set(tuple(endpoints))


@functools.lru_cache(maxsize=4096)  # asked again for every model on the same replicas
def _replica_set(endpoints: tuple[Endpoint, ...]) -> str:
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
    static = all(is_ip_address(host) for host, _ in [*addresses, *reload])
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
                            endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port))
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


def loopback_clusters(*, address: str, port: int) -> dict[str, cluster_pb2.Cluster]:
    """Clusters pointing at the data-plane listener itself, for mirrored copies (http and h2c)."""
    return {
        LOOPBACK_CLUSTER + suffix: _cluster(LOOPBACK_CLUSTER + suffix, [(address, port)], http2=http2)
        for suffix, http2 in (("_http", False), ("_grpc", True))
    }


def socket_address(host: str, port: int) -> address_pb2.Address:
    """A TCP address: an endpoint's here, the listener's bind address (xdsserver/listener.py)."""
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))
