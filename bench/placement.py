"""Micro-benchmark: time per placement decision for each built-in policy.

Places 1,000 models (128 to 768 MiB, every tenth with 2 replicas) one after the other onto
4 servers x 5 replicas of 64 GiB, reserving memory after each decision as the core does, and
reports the time spent in ``place`` per decision (median of 5 runs, each on a fresh fleet).

    .venv/bin/python -m bench.placement
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from apis.mlops.agent import agent_pb2
from apis.mlops.scheduler import scheduler_pb2
from scheduler.placement import Placement, PlacementPolicy, required_memory
from scheduler.policies import load_policy
from scheduler.state import ModelVersion, Server, ServerReplica

POLICIES = ("seldon", "binpack", "spread-hash")
MODELS = 1_000
SERVERS, REPLICAS_PER_SERVER = 4, 5
REPLICA_MEMORY = 64 << 30
RUNS = 5


def fleet() -> list[Server]:
    servers = []
    for s in range(SERVERS):
        name = f"mlserver-{s}"
        config = agent_pb2.ReplicaConfig(memoryBytes=REPLICA_MEMORY, capabilities=["sklearn", "mlserver"])
        replicas = {
            i: ServerReplica(name, i, config, available_memory=REPLICA_MEMORY)
            for i in range(REPLICAS_PER_SERVER)
        }
        servers.append(Server(name, replicas))
    return servers


def workload(seed: int = 7) -> list[ModelVersion]:
    rng = random.Random(seed)
    return [
        ModelVersion(
            1,
            scheduler_pb2.Model(
                meta=scheduler_pb2.MetaData(name=f"model-{i:04d}"),
                modelSpec=scheduler_pb2.ModelSpec(
                    uri=f"gs://models/{i}", requirements=["sklearn"], memoryBytes=rng.randint(128, 768) << 20
                ),
                deploymentSpec=scheduler_pb2.DeploymentSpec(replicas=2 if i % 10 == 0 else 1),
            ),
        )
        for i in range(MODELS)
    ]


def one_run(policy: PlacementPolicy, models: list[ModelVersion]) -> tuple[float, list[Server], int]:
    """Seconds spent in ``place`` per decision, the fleet afterwards, and how many models were placed."""
    servers = fleet()
    by_name = {s.name: s for s in servers}
    spent, placed = 0, 0
    for version in models:
        start = time.perf_counter_ns()
        result = policy.place(version, servers)
        spent += time.perf_counter_ns() - start
        if isinstance(result, Placement):
            placed += 1
            for idx in result.replicas:
                by_name[result.server].replicas[idx].reservations[version.versioned_name] = required_memory(
                    version
                )
    return spent / 1e9 / len(models), servers, placed


def run(*, policies: tuple[str, ...] = POLICIES, runs: int = RUNS) -> list[dict[str, Any]]:
    """One row per policy: median µs per decision over ``runs`` runs, and what the placement looked like."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    models = workload()
    rows = []
    for name in policies:
        policy = load_policy(name)
        timings = []
        for _ in range(runs):
            per_decision, servers, placed = one_run(policy, models)
            timings.append(per_decision)
        loads = [len(r.reservations) for s in servers for r in s.replicas.values()]
        rows.append(
            {
                "policy": name,
                "us_per_decision": statistics.median(timings) * 1e6,
                "placed": placed,
                "replicas_used": sum(1 for n in loads if n),
                "empty_replicas": sum(1 for n in loads if not n),
                "models_per_replica": (min(loads), max(loads)),
            }
        )
    return rows


def main() -> None:
    rows = run()
    print(
        f"{MODELS} models onto {SERVERS * REPLICAS_PER_SERVER} replicas; time in place() per decision, "
        f"median of {RUNS} runs\n"
    )
    print("| policy | µs / decision | placed | replicas used | empty replicas | models per replica |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        low, high = row["models_per_replica"]
        print(
            f"| {row['policy']} | {row['us_per_decision']:.1f} | {row['placed']} | "
            f"{row['replicas_used']} | {row['empty_replicas']} | {low}-{high} |"
        )


if __name__ == "__main__":
    main()
