"""Which dataflow engines run a pipeline (consistent hashing), and moving it make-before-break.

A pipeline's *owners* are the first ``replicas`` subscribed engines met walking a ``hashring`` ring
(md5, equal weights; :func:`scheduler.policies.spread_hash.ring_order`) from the hash of its name, so
an engine joining or leaving moves only about 1/N of the pipelines, and the same set of engines
always gives the same owners (decision 0022). Only owners are told to run a pipeline.

A move never leaves a pipeline unserved while an engine that runs it is alive:

1. a new owner is told ``Create``; the engines that ran it before (*draining*) keep it;
2. once every owner confirmed, the ``<p>.pipeline`` route names owners *and* draining engines;
3. once every Envoy ACKed that, the route names the owners only;
4. once every Envoy ACKed that, the draining engines are told ``Delete``.

A dead engine is simply gone: its stream ended, so it is neither owner nor draining.
"""

from __future__ import annotations

import time

from apis.hash_ring import ring_order
from apis.mlops.chainer import chainer_pb2
from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from pipelines.model import Pipeline
from scheduler.dataflow import CREATE, DELETE, DataflowEngines, EngineSession, Update

MAX_REPLICAS = 16  # engines one pipeline may run on at once


def update_for(pipeline: Pipeline, op: int) -> Update:
    return chainer_pb2.PipelineUpdateMessage(
        op=op,  # type: ignore[arg-type]
        pipeline=pipeline.name,
        version=pipeline.version,
        uid=pipeline.uid,
        allowCycles=pipeline.allow_cycles,
        maxStepRevisits=pipeline.max_step_revisits,
        timestamp=time.time_ns(),
    )


class PipelinePlacement:
    """Owners per pipeline, the Creates and Deletes of a move, and the route each step wants.

    ``gateway`` is where an engine that registered no gateway is reached; None: no routes at all
    (a move then only waits for the owners' confirmations).
    """

    def __init__(self, engines: DataflowEngines, *, replicas: int, gateway: Endpoint | None) -> None:
        if not 1 <= replicas <= MAX_REPLICAS:
            raise ValueError(f"a pipeline runs on 1-{MAX_REPLICAS} engines, not {replicas}")
        self.engines = engines
        self.replicas = replicas
        self.routes = gateway is not None
        self._gateway = gateway

    def owners(self, pipeline: str) -> list[str]:
        return ring_order(pipeline, self.engines.sessions)[: self.replicas]

    def draining(self, pipeline: str) -> list[str]:
        """Engines told to run ``pipeline`` that are not its owners any more."""
        owners = set(self.owners(pipeline))
        return [n for n, s in sorted(self.engines.sessions.items()) if n not in owners and s.runs(pipeline)]

    def place(self, pipeline: Pipeline, *, again: bool = False) -> None:
        """Tell every owner not yet told to run this version to run it (``again``: every owner)."""
        for name in self.owners(pipeline.name):
            session = self.engines.sessions[name]
            told = session.told.get(pipeline.name)
            if again or told is None or told.op != CREATE or told.version != pipeline.version:
                session.send(update_for(pipeline, CREATE))

    def stop_everywhere(self, pipeline: Pipeline) -> None:
        """Unload: every engine told to run it (owner or draining) is told to stop."""
        for session in self.engines.sessions.values():
            if session.runs(pipeline.name):
                session.send(update_for(pipeline, DELETE))

    def stopping(self, pipeline: Pipeline) -> list[str]:
        """Engines told to stop this version (what an unload waits for)."""
        return [n for n, s in sorted(self.engines.sessions.items()) if _told(s, pipeline, DELETE)]

    def owners_serve(self, pipeline: str) -> bool:
        owners = self.owners(pipeline)
        return bool(owners) and all(self.engines.sessions[o].serves(pipeline) for o in owners)

    def final_route(self, pipeline: Pipeline) -> Route:
        """The route once the pipeline settled: its owners' gateways."""
        return self._route(pipeline, self.owners(pipeline.name))

    def next_route(self, pipeline: Pipeline, held: Route | None) -> Route | None:
        """The route to publish now, given what Envoy holds; None: leave it as it is."""
        if self.owners_serve(pipeline.name) and held is not None:
            final = self.final_route(pipeline)
            if _covers(held, final):
                return final  # step 3
        candidates = self.owners(pipeline.name) + self.draining(pipeline.name)
        serving = [n for n in candidates if self.engines.sessions[n].serves(pipeline.name)]
        # Nobody serves yet (a first load, or the only owner died): keep what Envoy has.
        return self._route(pipeline, serving) if serving else None

    def release(self, pipeline: Pipeline, held: Route | None) -> list[str]:
        """Step 4: tell draining engines to stop once the owners serve and, with routes, every Envoy
        holds the owners-only route. Returns the engines told."""
        if not self.owners_serve(pipeline.name):
            return []
        if self.routes and held != self.final_route(pipeline):
            return []
        released = self.draining(pipeline.name)
        for name in released:
            session = self.engines.sessions[name]
            told = session.told[pipeline.name]
            stop = Update()
            stop.CopyFrom(told)
            stop.op = DELETE
            stop.timestamp = time.time_ns()
            session.send(stop)
        return released

    def gateways(self) -> set[Endpoint]:
        """Every subscribed engine's gateway."""
        return {self._endpoint(s) for s in self.engines.sessions.values()} if self._gateway else set()

    def _route(self, pipeline: Pipeline, engines: list[str]) -> Route:
        name = pipeline.route_name
        if not engines or self._gateway is None:
            return Route(name)
        endpoints = sorted({self._endpoint(self.engines.sessions[n]) for n in engines}, key=_endpoint_key)
        # The target names the pipeline: its clusters, the gRPC model name and the path Envoy sends.
        # Clusters of its own: a pipeline moves between engines as they join and leave, and an
        # own cluster takes the new gateways in place, where a switch to another replica set's
        # clusters failed requests under traffic (tests/e2e/test_engine_replicas.py).
        return Route(name, (Split(name, WEIGHT_SCALE, tuple(endpoints), own_clusters=True),))

    def _endpoint(self, session: EngineSession) -> Endpoint:
        assert self._gateway is not None
        return session.gateway or self._gateway


def _told(session: EngineSession, pipeline: Pipeline, op: int) -> bool:
    told = session.told.get(pipeline.name)
    return told is not None and told.op == op and told.version == pipeline.version


def _covers(held: Route, wanted: Route) -> bool:
    """Every endpoint ``wanted`` names is already in ``held``."""
    have = {e for s in held.splits for e in s.endpoints}
    return all(e in have for s in wanted.splits for e in s.endpoints)


def _endpoint_key(endpoint: Endpoint) -> tuple[str, int, int]:
    return endpoint.host, endpoint.http_port, endpoint.grpc_port
