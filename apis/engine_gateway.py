"""How a dataflow engine tells the scheduler where its pipeline gateway listens (decision 0022).

``chainer.proto``'s ``PipelineSubscriptionRequest`` carries only the engine's name, so the engine
sends its gateway's address as gRPC metadata on ``SubscribePipelineUpdates``; the scheduler makes it
an endpoint of the ``<p>.pipeline`` routes of the pipelines that engine runs. An engine that sends
none (Seldon's own) is reached at the scheduler's ``--pipeline-gateway-*`` address.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from apis.validation import InvalidResource, validate_host

GATEWAY_HOST_HEADER = "meshserve-gateway-host"
GATEWAY_HTTP_PORT_HEADER = "meshserve-gateway-http-port"
GATEWAY_GRPC_PORT_HEADER = "meshserve-gateway-grpc-port"
_HEADERS = (GATEWAY_HOST_HEADER, GATEWAY_HTTP_PORT_HEADER, GATEWAY_GRPC_PORT_HEADER)
_PORT = re.compile(r"[0-9]{1,5}")


def gateway_metadata(host: str, http_port: int, grpc_port: int) -> tuple[tuple[str, str], ...]:
    """The metadata an engine subscribes with."""
    return (
        (GATEWAY_HOST_HEADER, host),
        (GATEWAY_HTTP_PORT_HEADER, str(http_port)),
        (GATEWAY_GRPC_PORT_HEADER, str(grpc_port)),
    )


def parse_gateway_metadata(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[str, int, int] | None:
    """``(host, http_port, grpc_port)`` from a subscription's metadata; None when it names none.

    Raises InvalidResource when only some are given, a host is not a bare host, or a port is not
    1-65535.
    """
    given: dict[str, str] = {}
    for key, value in metadata:
        if key in _HEADERS:
            if not isinstance(value, str):
                raise InvalidResource(f"{key} must be text")
            given[key] = value
    if not given:
        return None
    missing = [h for h in _HEADERS if h not in given]
    if missing:
        raise InvalidResource(f"a gateway address needs {', '.join(_HEADERS)}; missing {', '.join(missing)}")
    host = validate_host(given[GATEWAY_HOST_HEADER], what=GATEWAY_HOST_HEADER)
    return host, _port(given, GATEWAY_HTTP_PORT_HEADER), _port(given, GATEWAY_GRPC_PORT_HEADER)


def _port(given: dict[str, str], key: str) -> int:
    raw = given[key]
    if not _PORT.fullmatch(raw) or not 1 <= int(raw) <= 65_535:
        raise InvalidResource(f"{key} must be a port number 1-65535, not {raw[:16]!r}")
    return int(raw)
