"""The gateway address a dataflow engine registers in its subscription's metadata (decision 0022)."""

from __future__ import annotations

import pytest

from apis.engine_gateway import (
    GATEWAY_GRPC_PORT_HEADER,
    GATEWAY_HOST_HEADER,
    GATEWAY_HTTP_PORT_HEADER,
    gateway_metadata,
    parse_gateway_metadata,
)
from apis.validation import InvalidResource


def test_an_address_round_trips_and_other_metadata_is_ignored() -> None:
    metadata = (("user-agent", "grpc"), *gateway_metadata("engine-1.local", 9010, 9011))
    assert parse_gateway_metadata(metadata) == ("engine-1.local", 9010, 9011)
    assert parse_gateway_metadata([("user-agent", "grpc")]) is None


@pytest.mark.parametrize(
    ("host", "http", "grpc", "message"),
    [
        ("127.0.0.1", "0", "9011", GATEWAY_HTTP_PORT_HEADER),
        ("127.0.0.1", "9010", "65536", GATEWAY_GRPC_PORT_HEADER),
        ("127.0.0.1", "９０１０", "9011", GATEWAY_HTTP_PORT_HEADER),  # noqa: RUF001 - unicode digits
        ("127.0.0.1", "-1", "9011", GATEWAY_HTTP_PORT_HEADER),
        ("http://127.0.0.1", "9010", "9011", GATEWAY_HOST_HEADER),
        ("", "9010", "9011", GATEWAY_HOST_HEADER),
    ],
)
def test_bad_addresses_are_refused_naming_the_field(host: str, http: str, grpc: str, message: str) -> None:
    metadata = [
        (GATEWAY_HOST_HEADER, host),
        (GATEWAY_HTTP_PORT_HEADER, http),
        (GATEWAY_GRPC_PORT_HEADER, grpc),
    ]
    with pytest.raises(InvalidResource, match=message):
        parse_gateway_metadata(metadata)


def test_a_partial_or_binary_address_is_refused() -> None:
    with pytest.raises(InvalidResource, match="missing meshserve-gateway-grpc-port"):
        parse_gateway_metadata(gateway_metadata("h", 1, 2)[:2])
    with pytest.raises(InvalidResource, match="must be text"):
        parse_gateway_metadata([(GATEWAY_HOST_HEADER, b"h")])
