"""The local stack's controller for Server resources: what the Seldon operator does in Kubernetes.

The scheduler is the source of truth. ``meshserve server load`` declares a server to it
(``ServerNotify``) and leaves the replica spec (capabilities) in ``$MESHSERVE_HOME/servers/``;
this controller follows ``SubscribeServerStatus`` and keeps that many MLServer + agent pairs
running: missing replicas are started, replicas above the expected count are stopped once the
scheduler has moved every model off them (make before break; the agent, stopped with SIGTERM,
drains too). The scheduler's ScalingRequests (server autoscaling) are carried out as the operator
does: the new count, kept within the Server's minReplicas/maxReplicas, is declared (ServerNotify),
and the status that follows starts or retires replicas as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Protocol

import grpc
import structlog

from apis.mlops.scheduler import scheduler_pb2, scheduler_pb2_grpc
from apis.tls import channel
from stack.components import Component, ReplicaPorts, replica_names, server_replica
from stack.config import StackConfig
from stack.ports import free_ports
from stack.server_spec import read_replica_spec, server_spec_file

log = structlog.get_logger("meshserve.stack.controller")
RECONNECT_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
NOTIFY_TIMEOUT_SECONDS = 10.0


class Processes(Protocol):
    """What the controller needs of the supervisor (which owns it: the arrow points one way)."""

    @property
    def config(self) -> StackConfig: ...

    async def add(self, *members: Component) -> None:
        """Start one replica's components in order and return once each is ready."""

    async def remove(self, name: str) -> None:
        """Stop the component called ``name``, if it runs."""


class ServerController:
    """Keeps each declared server's replicas running: follows the scheduler's server status and
    starts or retires MLServer + agent pairs to match it (the rules are in the module docstring)."""

    def __init__(self, supervisor: Processes) -> None:
        self._supervisor = supervisor
        self._config = supervisor.config
        # Replicas this stack runs, per server (the default server's replica 0 starts with the stack).
        self._replicas: dict[str, set[int]] = {self._config.server_name: {0}}
        self._latest: dict[str, scheduler_pb2.ServerStatusResponse] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        follower = asyncio.create_task(self._follow())
        await stop.wait()
        for task in [follower, *self._workers.values()]:
            task.cancel()
        for task in [follower, *self._workers.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        target = f"{self._config.host}:{self._config.scheduler_port}"
        request = scheduler_pb2.ServerSubscriptionRequest(subscriberName="meshserve-stack")
        while True:
            try:
                async with channel(target, self._config.client_tls("controller")) as grpc_channel:
                    stub = scheduler_pb2_grpc.SchedulerStub(grpc_channel)
                    async for status in stub.SubscribeServerStatus(request):
                        if status.type == scheduler_pb2.ServerStatusResponse.ScalingRequest:
                            await self._scale(stub, status)
                        else:
                            self._changed(status)
            except grpc.aio.AioRpcError as error:
                log.debug("server status stream ended; reconnecting", code=str(error.code()))
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _scale(
        self, stub: scheduler_pb2_grpc.SchedulerAsyncStub, request: scheduler_pb2.ServerStatusResponse
    ) -> None:
        """Declare the replica count the scheduler asks for, within the Server's bounds."""
        server = request.serverName
        try:
            spec = self._spec(server)
            bounds = (
                None if spec is None else (int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", 0)))
            )
        except (OSError, TypeError, ValueError) as exc:
            # A hand-edited file must not end the follower (it would stop every later request).
            log.error("scaling request ignored: unreadable server spec", server=server, error=str(exc))
            return
        if bounds is None:
            log.warning("scaling request for a server this stack does not manage", server=server)
            return
        low, high = bounds
        replicas = max(request.expectedReplicas, low, 1)
        if high:
            replicas = min(replicas, high)
        log.info("scaling server", server=server, replicas=replicas, reason=request.scalingReason)
        notify = scheduler_pb2.ServerNotify(
            name=server, expectedReplicas=replicas, minReplicas=low, maxReplicas=high, shared=True
        )
        try:
            await stub.ServerNotify(
                scheduler_pb2.ServerNotifyRequest(servers=[notify]), timeout=NOTIFY_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as error:  # the scheduler asks again while it still wants it
            log.warning(
                "scaling not declared", server=server, code=str(error.code()), details=error.details()
            )

    def _changed(self, status: scheduler_pb2.ServerStatusResponse) -> None:
        """Keep the newest status per server; one worker per server applies it (starts take seconds)."""
        self._latest[status.serverName] = status
        worker = self._workers.get(status.serverName)
        if worker is None or worker.done():
            self._workers[status.serverName] = asyncio.create_task(
                self._reconcile_until_stable(status.serverName)
            )

    async def _reconcile_until_stable(self, server: str) -> None:
        """Apply the newest status until it is applied; a failure (a replica that did not start)
        is retried, backing off up to ``MAX_RETRY_SECONDS``, as no new status may ever come."""
        applied = None
        failures = 0
        while (status := self._latest[server]) is not applied:
            applied = status
            try:
                await self._reconcile(status)
                failures = 0
            except Exception:  # keep the controller alive and try again
                failures += 1
                delay = min(RECONNECT_SECONDS * 2 ** (failures - 1), MAX_RETRY_SECONDS)
                log.exception("reconcile failed; retrying", server=server, retry_in=delay)
                await asyncio.sleep(delay)
                applied = None

    async def _reconcile(self, status: scheduler_pb2.ServerStatusResponse) -> None:
        if status.expectedReplicas < 0:
            return  # not declared by a Server resource: nothing to manage
        server, expected = status.serverName, status.expectedReplicas
        running = self._replicas.setdefault(server, set())
        for idx in range(expected):
            if idx not in running:
                await self._start(server, idx)
                running.add(idx)
        loaded = {r.replicaIdx: r.numLoadedModels for r in status.resources}
        for idx in sorted(i for i in running if i >= expected):
            if loaded.get(idx, 0) == 0:
                await self._stop(server, idx)
                running.discard(idx)

    async def _start(self, server: str, idx: int) -> None:
        http, grpc_port, metrics = free_ports(3, avoid=self._config.ports())
        spec = read_replica_spec(self._config, server)
        log.info("starting server replica", server=server, replica=idx, spec=spec)
        await self._supervisor.add(
            *server_replica(
                self._config, ReplicaPorts(http, grpc_port, metrics), server=server, idx=idx, spec=spec
            )
        )

    async def _stop(self, server: str, idx: int) -> None:
        log.info("stopping server replica", server=server, replica=idx)
        mlserver, agent = replica_names(self._config, server, idx)
        await self._supervisor.remove(agent)
        await self._supervisor.remove(mlserver)

    def _spec(self, server: str) -> dict[str, Any] | None:
        """What ``meshserve server load`` left for ``server`` (capabilities, bounds); None if nothing."""
        try:
            spec: dict[str, Any] = json.loads(server_spec_file(self._config.home, server).read_text())
        except FileNotFoundError:
            return None
        return spec
