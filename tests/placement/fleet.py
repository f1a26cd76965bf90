"""Builders for placement tests: servers, replicas and model versions made of real protos."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler.placement import Placement, PlacementFailure, PlacementPolicy, required_memory
from scheduler.state import ModelVersion, Server, ServerReplica

GiB = 1 << 30
CAPABILITIES = ("sklearn", "mlserver")


def replica(
    server: str,
    idx: int,
    *,
    free: int,
    capacity: int | None = None,
    capabilities: Sequence[str] = CAPABILITIES,
) -> ServerReplica:
    config = agent_pb2.ReplicaConfig(
        inferenceSvc=f"{server}-{idx}",
        inferenceHttpPort=9000,
        inferenceGrpcPort=9500,
        memoryBytes=free if capacity is None else capacity,
        capabilities=list(capabilities),
    )
    return ServerReplica(server, idx, config, available_memory=free)


def server(
    name: str,
    free: Iterable[int],
    *,
    capacity: int | None = None,
    capabilities: Sequence[str] = CAPABILITIES,
    shared: bool = True,
) -> Server:
    replicas = {
        i: replica(name, i, free=f, capacity=capacity, capabilities=capabilities) for i, f in enumerate(free)
    }
    return Server(name, replicas, shared=shared)


def model(
    name: str,
    *,
    memory: int = 0,
    replicas: int = 1,
    min_replicas: int = 0,
    requirements: Sequence[str] = ("sklearn",),
    pinned_to: str = "",
) -> ModelVersion:
    spec = scheduler_pb2.Model(
        meta=scheduler_pb2.MetaData(name=name),
        modelSpec=scheduler_pb2.ModelSpec(
            uri=f"gs://models/{name}",
            requirements=list(requirements),
            memoryBytes=memory,
            server=pinned_to or None,
        ),
        deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=replicas, minReplicas=min_replicas),
    )
    return ModelVersion(1, spec)


def two_servers() -> list[Server]:
    """2 servers x 3 replicas of 8 GiB, partly used already (varied free memory)."""
    return [
        server("mlserver-a", [8 * GiB, 5 * GiB, 3 * GiB], capacity=8 * GiB),
        server("mlserver-b", [7 * GiB, 6 * GiB, 2 * GiB], capacity=8 * GiB),
    ]


# The fixed workload: (name, memory in MiB, replicas); 15.5 GiB of the fleet's 31 GiB free.
WORKLOAD: tuple[tuple[str, int, int], ...] = (
    ("iris", 1024, 1),
    ("income", 2048, 1),
    ("mnist", 512, 2),
    ("cifar10", 1536, 1),
    ("sentiment", 1024, 1),
    ("fraud", 512, 1),
    ("churn", 768, 2),
    ("wine", 256, 1),
    ("housing", 1024, 1),
    ("titanic", 512, 1),
    ("digits", 1280, 1),
    ("spam", 768, 1),
)


def workload() -> list[ModelVersion]:
    return [model(name, memory=mib << 20, replicas=n) for name, mib, n in WORKLOAD]


def place_all(
    policy: PlacementPolicy, models: Iterable[ModelVersion], servers: Sequence[Server]
) -> dict[str, Placement | PlacementFailure]:
    """Place ``models`` one after the other, reserving memory as the core does after each decision."""
    by_name = {s.name: s for s in servers}
    results: dict[str, Placement | PlacementFailure] = {}
    for version in models:
        result = results[version.name] = policy.place(version, servers)
        if isinstance(result, Placement):
            for idx in result.replicas:
                by_name[result.server].replicas[idx].reservations[version.versioned_name] = required_memory(
                    version
                )
    return results


def replicas_used(results: dict[str, Placement | PlacementFailure]) -> set[str]:
    return {f"{p.server}/{i}" for p in results.values() if isinstance(p, Placement) for i in p.replicas}


def assignment(results: dict[str, Placement | PlacementFailure]) -> dict[str, tuple[str, ...]]:
    """Model name → its replica ids, ``()`` when placement failed."""
    return {
        name: tuple(f"{p.server}/{i}" for i in p.replicas) if isinstance(p, Placement) else ()
        for name, p in results.items()
    }
