"""Hand-written fakes and builders shared by the unit tests (no mocks).

``FakeEnvoy`` is the route publisher's ACK quorum: it "applies" a snapshot of the resource cache
when told to, and answers ``acked`` against that snapshot only, the way a real Envoy lags behind
the cache. ``Harness`` wires a real :class:`Scheduler` to a real :class:`RoutePublisher` over a
real :class:`ResourceCache`, and plays the agents through their :class:`AgentLink` outboxes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from apis.routing import WEIGHT_SCALE, Endpoint, Route
from scheduler.core import AgentLink, Scheduler
from scheduler.experiments import Experiments
from scheduler.pipelines import Pipelines
from scheduler.state import ModelState, ModelVersion
from scheduler.store import StateStore
from xdsserver.cache import Requirement, ResourceCache
from xdsserver.routes import AckListener, RoutePublisher
from xdsserver.types import CLUSTER, LISTENER, ROUTE, SCOPED_ROUTE

Event = agent_pb2.ModelEventMessage
Operation = agent_pb2.ModelOperationMessage
WAIT_S = 1.0
MEMORY = 1_000_000


class FakeEnvoy:
    """Holds what the cache had at the last :meth:`sync`; ``acked`` checks that snapshot."""

    def __init__(self, cache: ResourceCache) -> None:
        self._cache = cache
        self._held: dict[str, dict[str, int]] = {}
        self._listeners: list[AckListener] = []
        self._rejects: list[Callable[[str, str, str], None]] = []

    def on_ack(self, listener: AckListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_reject(self, listener: Callable[[str, str, str], None]) -> Callable[[], None]:
        self._rejects.append(listener)
        return lambda: self._rejects.remove(listener)

    def reject(self, type_url: str, name: str, message: str) -> None:
        """Envoy refuses one resource (a NACK of it alone)."""
        for listener in list(self._rejects):
            listener(type_url, name, message)

    def sync(self) -> None:
        """Take the cache as it is now and ACK all of it, again while ACKs make the publisher send
        more (a scope goes out once its clusters are held), as a live Envoy keeps ACKing."""
        for attempt in range(5):
            held = {
                t: {name: entry.version for name, entry in self._cache.live(t).items()}
                for t in (CLUSTER, LISTENER, SCOPED_ROUTE, ROUTE)
            }
            if attempt and held == self._held:
                return
            self._held = held
            for listener in list(self._listeners):
                listener(None)

    def acked(self, requirements: Iterable[Requirement]) -> bool:
        return all(self._holds(r) for r in requirements)

    def held(self, requirements: Iterable[Requirement]) -> bool:
        return self.acked(requirements)  # one Envoy, always connected

    def _holds(self, requirement: Requirement) -> bool:
        held = self._held.get(requirement.type_url, {}).get(requirement.name)
        if requirement.removed:
            return held is None
        return held is not None and held >= requirement.version


def model(
    name: str,
    *,
    uri: str = "gs://models/iris",
    replicas: int | None = None,
    min_replicas: int = 0,
    memory: int = 0,
    requirements: tuple[str, ...] = ("sklearn",),
    server: str | None = None,
) -> scheduler_pb2.Model:
    spec = scheduler_pb2.ModelSpec(uri=uri, memoryBytes=memory, requirements=list(requirements))
    if server is not None:
        spec.server = server
    built = scheduler_pb2.Model(meta=scheduler_pb2.MetaData(name=name), modelSpec=spec)
    if replicas is not None:
        built.deploymentSpec.CopyFrom(
            scheduler_pb2.DeploymentSpec(replicas=replicas, minReplicas=min_replicas)
        )
    return built


def subscribe(
    server: str = "mlserver",
    idx: int = 0,
    *,
    memory: int = MEMORY,
    capabilities: tuple[str, ...] = ("sklearn",),
    loaded: Iterable[tuple[str, int]] = (),
    shared: bool = True,
) -> agent_pb2.AgentSubscribeRequest:
    return agent_pb2.AgentSubscribeRequest(
        serverName=server,
        replicaIdx=idx,
        shared=shared,
        availableMemoryBytes=memory,
        replicaConfig=agent_pb2.ReplicaConfig(
            inferenceSvc=f"10.0.0.{idx + 1}",
            inferenceHttpPort=9000,
            inferenceGrpcPort=9500,
            memoryBytes=memory,
            capabilities=list(capabilities),
        ),
        loadedModels=[agent_pb2.ModelVersion(model=model(name), version=version) for name, version in loaded],
    )


def pending_ops(link: AgentLink) -> list[tuple[str, str, int]]:
    """Everything queued for an agent, as ``(operation, model, version)``; empties the outbox."""
    ops: list[tuple[str, str, int]] = []
    while not link.outbox.empty():
        op = link.outbox.get_nowait()
        if op is not None:
            kind = Operation.Operation.Name(op.operation)
            ops.append((kind, op.modelVersion.model.meta.name, op.modelVersion.version))
    return ops


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@dataclass
class Harness:
    cache: ResourceCache = field(default_factory=ResourceCache)
    grace_s: float = 0.05
    store_path: Path | None = None
    gateway: Endpoint | None = None  # the pipeline gateway: with it, pipelines have routes
    pipeline_replicas: int = 1

    def __post_init__(self) -> None:
        self.envoy = FakeEnvoy(self.cache)
        self.publisher = RoutePublisher(self.cache, self.envoy)
        store = StateStore(self.store_path)
        self.scheduler = Scheduler(self.publisher, agent_grace_seconds=self.grace_s, store=store)
        self.pipelines = Pipelines(
            self.scheduler, store, gateway=self.gateway, replicas=self.pipeline_replicas
        )
        self.experiments = Experiments(self.scheduler, store, self.pipelines)
        self.links: dict[tuple[str, int], AgentLink] = {}

    async def settle(self) -> None:
        for _ in range(3):
            await asyncio.sleep(0)

    async def connect(
        self,
        server: str = "mlserver",
        idx: int = 0,
        *,
        memory: int = MEMORY,
        capabilities: tuple[str, ...] = ("sklearn",),
        loaded: Iterable[tuple[str, int]] = (),
    ) -> AgentLink:
        request = subscribe(server, idx, memory=memory, capabilities=capabilities, loaded=loaded)
        link = self.scheduler.agent_connected(request)
        self.links[(server, idx)] = link
        await self.settle()
        return link

    async def load(self, spec: scheduler_pb2.Model) -> None:
        self.scheduler.load_model(spec)
        await self.settle()

    async def unload(self, name: str) -> None:
        self.scheduler.unload_model(name)
        await self.settle()

    async def report(
        self,
        kind: Event.Event.ValueType,
        name: str,
        version: int,
        *,
        server: str = "mlserver",
        idx: int = 0,
        memory: int = MEMORY,
        message: str = "",
    ) -> None:
        self.scheduler.agent_event(
            Event(
                serverName=server,
                replicaIdx=idx,
                modelName=name,
                modelVersion=version,
                event=kind,
                message=message,
                availableMemoryBytes=memory,
            )
        )
        await self.settle()

    async def envoy_applies(self) -> None:
        """Envoy takes the cache as it is now and ACKs it."""
        self.envoy.sync()
        await self.settle()

    async def make_available(
        self, name: str, version: int = 1, *, server: str = "mlserver", idx: int = 0
    ) -> None:
        await self.report(Event.LOADED, name, version, server=server, idx=idx)
        await self.envoy_applies()

    def version(self, name: str, number: int | None = None) -> ModelVersion:
        record = self.scheduler.models[name]
        found = record.latest if number is None else record.version(number)
        assert found is not None, f"{name} has no version {number}"
        return found

    def state(self, name: str, number: int | None = None) -> ModelState:
        return self.version(name, number).state

    def route(self, name: str) -> Route | None:
        return self.scheduler.route(name)

    def targets(self, name: str) -> dict[str, int]:
        route = self.route(name)
        """Each target's share of the route, in percent (weights are millionths)."""
        return {s.target: s.weight * 100 // WEIGHT_SCALE for s in route.splits} if route else {}
