"""Composition root: builds the agent's collaborators and runs it until cancelled."""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry
from structlog.typing import FilteringBoundLogger

from agent.client import AgentClient
from agent.config import AgentConfig
from agent.debug import served_debug
from agent.identity import AgentIdentity, new_agent_id
from agent.inflight import EnvoyInFlight, UsageTracker
from agent.locks import ModelLocks
from agent.log import get_logger
from agent.metrics import MeteredOperator, served_metrics
from agent.mlserver import MLServerClient
from agent.reload import ReloadGate, served_reload
from agent.repository import LocalRepository
from agent.state import ReplicaState
from agent.watch import MLServerWatcher
from apis import tls
from apis.limits import GRPC_RECEIVE_LIMIT
from apis.runtime import NO_BDP_PROBE


async def run_agent(
    config: AgentConfig,
    *,
    logger: FilteringBoundLogger | None = None,
    drain_requested: asyncio.Event | None = None,
) -> None:
    """Wait for MLServer, adopt what it still serves, then follow the scheduler until cancelled,
    watching MLServer meanwhile (agent/watch.py), or until ``drain_requested`` is set and the
    replica is drained (AgentDrain, bounded by ``--drain-timeout-seconds``).

    Cancelling leaves MLServer's models loaded, so a restarted agent can adopt them.
    """
    log = logger or get_logger()
    state = ReplicaState(memory_bytes=config.memory_bytes, overcommit_percentage=config.overcommit_percentage)
    repository = LocalRepository(config.models_dir, policy=config.fetch_policy, envoy_url=config.envoy_url)
    async with (
        served_metrics(
            CollectorRegistry(),
            state=state,
            server=config.server_name,
            replica=config.replica_idx,
            mlserver_metrics_url=config.mlserver_metrics_url,
            host=config.metrics_host,
            port=config.metrics_port,
            logger=log,
        ) as metrics,
        MLServerClient(config.mlserver_url) as mlserver,
        # Last-used times are read from MLServer's counters when an eviction chooses a victim and when
        # ReplicaStatus asks, never on a timer: a periodic /metrics scrape stalled MLServer's loop
        # (resident p50 +1-3 ms, throughput -30 % in docs/benchmarks.md §8 before this).
        served_debug(
            state,
            host=config.debug_host,
            port=config.debug_port,
            logger=log,
            refresh=(usage := UsageTracker(metrics.scraper, state)).refresh,
        ),
    ):
        log.info("waiting for MLServer", url=config.mlserver_url)
        await mlserver.wait_live(config.startup_timeout_seconds)
        locks = ModelLocks(config.max_concurrent_operations)
        operator = MeteredOperator(
            metrics=metrics,
            mlserver=mlserver,
            repository=repository,
            state=state,
            logger=log,
            ready_timeout_s=config.startup_timeout_seconds,
            locks=locks,
            keep_evicted=config.reload_enabled,
        )
        operator.residency.refresh_usage = usage.refresh
        if config.envoy_admin_urls:
            envoy = EnvoyInFlight(
                config.envoy_admin_urls,
                host=config.inference_host,
                ports=(config.inference_http_port, config.inference_grpc_port),
                logger=log,
            )
            operator.residency.add_in_flight_source(envoy)
        elif config.reload_enabled:
            log.warning("no --envoy-admin-urls: evictions see only the reload listener's requests in flight")
        gate = ReloadGate(operator.residency, max_in_flight=config.reload_max_in_flight, logger=log)
        operator.residency.add_in_flight_source(gate)
        await operator.adopt_or_clean()
        async with tls.channel(
            config.scheduler_address,
            config.scheduler_tls,
            options=[GRPC_RECEIVE_LIMIT, NO_BDP_PROBE],
            interceptors=[AgentIdentity(new_agent_id())],
        ) as channel:
            client = AgentClient(
                config=config, channel=channel, operator=operator, state=state, logger=log, locks=locks
            )
            watcher = MLServerWatcher(
                mlserver=mlserver,
                state=state,
                operator=operator,
                interval_s=config.watch_interval_seconds,
                on_lost=lambda _lost, reason: client.resubscribe(reason),
                logger=log,
            )
            async with _reload_listener(config, gate), asyncio.TaskGroup() as tasks:
                watching = tasks.create_task(watcher.run())
                following = tasks.create_task(client.run())
                if drain_requested is None:
                    await following
                    return
                await drain_requested.wait()
                # Still subscribed and watching while draining: the scheduler's unloads arrive there.
                await client.drain(config.drain_timeout_seconds)
                watching.cancel()
                following.cancel()


def _reload_listener(config: AgentConfig, gate: ReloadGate) -> contextlib.AbstractAsyncContextManager[None]:
    """The reload listener (agent/reload.py) when this replica evicts models, else nothing."""
    if not config.reload_enabled:
        return contextlib.nullcontext()
    return served_reload(
        gate,
        host=config.reload_host,
        http_port=config.reload_http_port,
        grpc_port=config.reload_grpc_port,
        mlserver_url=config.mlserver_url,
        mlserver_grpc_address=config.mlserver_grpc_address,
    )
