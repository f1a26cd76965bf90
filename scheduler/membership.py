"""Server membership: which agents are connected, as which replica, and for how long they are missed.

:class:`Membership` owns the servers and their replicas, the agents' :class:`AgentLink` outboxes
and the grace timers of disconnected agents. It decides nothing about models: when a replica's
grace period runs out it fires ``on_expired(server, idx)`` and the use cases move its models.

Who may hold a replica: a registration is validated first (``apis.validation.validate_registration``:
host, ports, replica index, memory), so nothing malformed reaches Envoy. Each agent process sends
a random identity token (gRPC metadata ``x-meshserve-agent-id``, made at agent start). While a
replica's Subscribe stream is live, only the same identity may register it again (that agent
re-subscribing replaces its own stream); another identity is refused with :class:`ReplicaTaken`
(``ALREADY_EXISTS``) and the live stream is left alone. Once that stream has ended - during the
grace period or after it - any identity may take the replica over: that is how a restarted agent
(same replica, new token) comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

import structlog

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.validation import validate_registration
from scheduler.errors import ReplicaTaken
from scheduler.state import Server, ServerReplica

log = structlog.get_logger("meshserve.scheduler.membership")

Operation = agent_pb2.ModelOperationMessage


@dataclass(eq=False)
class AgentLink:
    """One agent's Subscribe stream: the scheduler queues operations, the servicer sends them."""

    server: str
    idx: int
    generation: int
    identity: str = ""
    outbox: asyncio.Queue[Operation | None] = field(default_factory=asyncio.Queue)

    def send(self, operation: Operation) -> None:
        self.outbox.put_nowait(operation)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class Membership:
    """Servers, replicas and agent links; grace timers for agents that went away."""

    def __init__(self, *, grace_seconds: float, on_expired: Callable[[str, int], None]) -> None:
        self.servers: dict[str, Server] = {}
        self._links: dict[tuple[str, int], AgentLink] = {}
        self._grace = grace_seconds
        self._on_expired = on_expired
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def link(self, server: str, idx: int) -> AgentLink | None:
        return self._links.get((server, idx))

    def replica(self, server: str, idx: int) -> ServerReplica | None:
        found = self.servers.get(server)
        return found.replicas.get(idx) if found is not None else None

    def restored(self) -> None:
        """Replicas loaded from the store are disconnected until their agents re-subscribe."""
        for server in self.servers.values():
            for replica in server.replicas.values():
                replica.generation = self._next_generation()
                self._expire_later(server.name, replica.idx, replica.generation)

    def connect(
        self, request: agent_pb2.AgentSubscribeRequest, identity: str = ""
    ) -> tuple[AgentLink, ServerReplica]:
        """Register an agent's stream as its replica (replacing an older stream of the same agent)."""
        validate_registration(request)
        name, idx = request.serverName, request.replicaIdx
        current = self._links.get((name, idx))
        if current is not None and current.identity != identity:
            log.warning("registration refused: replica held by another agent", server=name, replica=idx)
            raise ReplicaTaken(
                f"server {name} replica {idx} is held by another agent whose stream is live; "
                "a replica is taken over only once its agent's stream has ended"
            )
        generation = self._next_generation()
        previous = self._links.pop((name, idx), None)
        if previous is not None:
            previous.close()
        server = self.servers.setdefault(name, Server(name))
        if server.expected_replicas < 0:
            # Only an undeclared server takes the agent's word; a Server resource's setting wins.
            server.shared = request.shared
        replica = server.replicas[idx] = ServerReplica(
            name,
            idx,
            request.replicaConfig,
            available_memory=request.availableMemoryBytes,
            generation=generation,
            retiring=server.is_retiring(idx),
        )
        link = self._links[(name, idx)] = AgentLink(name, idx, generation, identity)
        log.info("agent connected", server=name, replica=idx, models=len(request.loadedModels))
        return link, replica

    def disconnect(self, link: AgentLink) -> None:
        """The agent's stream ended: keep its replica for the grace period, then expire it."""
        if self._links.get((link.server, link.idx)) is not link:
            return  # already replaced by a newer connection
        del self._links[(link.server, link.idx)]
        log.info("agent disconnected", server=link.server, replica=link.idx, grace=self._grace)
        # The model server may well still be serving; give the agent time to come back before
        # pulling its routes (a restarted agent then re-adopts its models with zero downtime).
        replica = self.replica(link.server, link.idx)
        if replica is not None and replica.generation == link.generation:
            replica.connected = False
        self._expire_later(link.server, link.idx, link.generation)

    def declare(self, notify: scheduler_pb2.ServerNotify) -> Server:
        """Apply a server's declared replica counts and sharing; replicas it no longer wants retire."""
        server = self.servers.setdefault(notify.name, Server(notify.name))
        server.expected_replicas = notify.expectedReplicas
        server.min_replicas, server.max_replicas = notify.minReplicas, notify.maxReplicas
        server.shared = notify.shared
        for replica in server.replicas.values():
            # A draining agent is leaving even if the new count would keep its replica (a
            # scale-up declared while it drains): nothing may be placed on it again.
            replica.retiring = replica.draining or server.is_retiring(replica.idx)
        return server

    def forget_if_empty(self, server: Server) -> None:
        if not server.replicas and server.expected_replicas <= 0 and self.servers.get(server.name) is server:
            del self.servers[server.name]
            log.info("server removed", server=server.name)

    def _expire_later(self, server: str, idx: int, generation: int) -> None:
        self._spawn(self._expire(server, idx, generation))

    async def _expire(self, server_name: str, idx: int, generation: int) -> None:
        await asyncio.sleep(self._grace)
        server = self.servers.get(server_name)
        replica = server.replicas.get(idx) if server else None
        if server is None or replica is None or replica.generation != generation:
            return
        del server.replicas[idx]
        log.info("replica removed", server=server_name, replica=idx)
        self.forget_if_empty(server)
        self._on_expired(server_name, idx)

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _spawn(self, coroutine: Coroutine[None, None, None]) -> None:
        if self._closed:  # a stream ending during shutdown starts no timer
            coroutine.close()
            return
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links.values():
            link.close()


def operation(
    kind: int, name: str, number: int, spec: scheduler_pb2.Model | None
) -> agent_pb2.ModelOperationMessage:
    """A LOAD/UNLOAD for an agent; an unload of a version the scheduler no longer knows names it only."""
    model = spec if spec is not None else scheduler_pb2.Model(meta=scheduler_pb2.MetaData(name=name))
    return agent_pb2.ModelOperationMessage(
        operation=kind,  # type: ignore[arg-type]
        modelVersion=agent_pb2.ModelVersion(model=model, version=number),
    )
