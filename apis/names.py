"""Names every process must agree on: headers, served model names, default capabilities.

A rule two processes share lives here once (the scheduler routes ``<model>_<version>`` that the
agent loads under that name; the CLI sends the headers Envoy matches on).
"""

from __future__ import annotations

# Request header naming the route: a model, ``<name>.experiment``, ``<name>.pipeline``.
MODEL_HEADER = "seldon-model"
# Response header naming the variant that answered; a caller echoing it back stays there.
ROUTE_HEADER = "x-seldon-route"
# Request header carrying the versioned name a request was routed to (read by Envoy's Lua filter).
INTERNAL_MODEL_HEADER = "seldon-internal-model"
REQUEST_ID_HEADER = "x-request-id"
# gRPC metadata on an agent's calls to the AgentService: the random token naming that agent process.
AGENT_ID_HEADER = "x-meshserve-agent-id"
# Response header (gRPC: trailing metadata of a trailers-only reply) an agent's reload listener sets
# when this replica cannot answer (its MLServer unreachable, a reload failed, listener full): Envoy
# retries such a reply on another replica instead of handing it to the caller.
RETRY_ELSEWHERE_HEADER = "x-meshserve-retry-elsewhere"

EXPERIMENT_SUFFIX = ".experiment"
PIPELINE_SUFFIX = ".pipeline"

# The runtimes an MLServer replica runs (ServerConfig "mlserver" in the reference).
MLSERVER_CAPABILITIES: tuple[str, ...] = ("mlserver", "sklearn", "xgboost", "lightgbm", "python")
DEFAULT_CAPABILITIES = ",".join(MLSERVER_CAPABILITIES)


def versioned_name(model: str, version: int) -> str:
    """The name a model version is served under on its model server: ``<model>_<version>``."""
    return f"{model}_{version}"


def model_of(target: str) -> str:
    """The model a versioned name belongs to (model names hold no ``_``, so the split is exact)."""
    return target.rpartition("_")[0]
