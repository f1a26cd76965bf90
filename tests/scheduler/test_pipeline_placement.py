"""Pipelines spread over dataflow engines by consistent hashing, and moved make-before-break when
engines join or leave (decision 0022): the ring's assignment and minimal movement, what each engine
is told, and the order of a move's steps against a fake Envoy that ACKs only when told."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from apis.hash_ring import ring_order
from apis.routing import Endpoint, Route
from scheduler.dataflow import CREATE, DELETE
from scheduler.pipeline_placement import MAX_REPLICAS, PipelinePlacement
from scheduler.pipeline_records import PipelineStatus
from scheduler.pipelines import Pipelines
from tests.scheduler.fakes import Harness
from tests.scheduler.test_pipelines import answer, chain, drain, state

S = PipelineStatus
DEFAULT = Endpoint("127.0.0.1", 9010, 9011)
GATEWAYS = {name: Endpoint("127.0.0.1", 20_000 + 2 * i, 20_001 + 2 * i) for i, name in enumerate("abcd")}


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Harness]]:
    built: list[Harness] = []

    def make(**fields: object) -> Harness:
        built.append(Harness(**fields))  # type: ignore[arg-type]
        return built[-1]

    yield make
    for harness in built:
        await harness.scheduler.close()


def engines(n: int) -> list[str]:
    return [f"engine-{i}" for i in range(n)]


def owners(names: list[str], nodes: list[str], replicas: int = 1) -> dict[str, tuple[str, ...]]:
    return {p: tuple(ring_order(p, nodes)[:replicas]) for p in names}


PIPELINES = [f"pipeline-{i}" for i in range(2_000)]


def test_the_assignment_depends_only_on_the_name_and_the_engines_and_spreads_them() -> None:
    first = owners(PIPELINES, engines(4))
    assert first == owners(PIPELINES, list(reversed(engines(4)))), "order of engines does not matter"
    per_engine = {e: sum(1 for o in first.values() if o == (e,)) for e in engines(4)}
    # md5 of fixed names: deterministic, so these bounds cannot flake; 500 each if perfectly even.
    assert all(250 <= n <= 750 for n in per_engine.values()), per_engine


@pytest.mark.parametrize("replicas", [1, 2])
def test_an_engine_joining_takes_about_1_over_n_and_nothing_else_moves(replicas: int) -> None:
    before = owners(PIPELINES, engines(4), replicas)
    after = owners(PIPELINES, engines(5), replicas)
    moved = [p for p in PIPELINES if before[p] != after[p]]
    for p in moved:  # the only change: the new engine comes in
        assert "engine-4" in after[p] and set(after[p]) - {"engine-4"} <= set(before[p]), p
    assert 0 < len(moved) <= len(PIPELINES) * replicas * 2 // 5, len(moved)


def test_an_engine_leaving_moves_only_its_own_pipelines() -> None:
    before = owners(PIPELINES, engines(5))
    after = owners(PIPELINES, engines(4))  # engine-4 left
    moved = {p for p in PIPELINES if before[p] != after[p]}
    assert moved == {p for p in PIPELINES if before[p] == ("engine-4",)}


def test_replicas_are_bounded(harness: Harness) -> None:
    for bad in (0, MAX_REPLICAS + 1):
        with pytest.raises(ValueError, match="engines"):
            PipelinePlacement(harness.pipelines.engines, replicas=bad, gateway=None)


def name_owned_by(engine: str, nodes: list[str]) -> str:
    return next(p for p in (f"p{i}" for i in range(1_000)) if ring_order(p, nodes)[0] == engine)


async def test_each_engine_is_told_only_its_pipelines_and_ready_needs_only_the_owners(
    harness: Harness,
) -> None:
    pipelines = harness.pipelines
    a = pipelines.engine_subscribed("a")
    b = pipelines.engine_subscribed("b")
    on_a, on_b = name_owned_by("a", ["a", "b"]), name_owned_by("b", ["a", "b"])
    pipelines.load(chain(on_a))
    pipelines.load(chain(on_b))
    assert drain(a) == [(on_a, CREATE, 1)] and drain(b) == [(on_b, CREATE, 1)]
    assert state(pipelines, on_a)[:2] == (S.PipelineCreating, "waiting for dataflow engines a")
    answer(pipelines, "a", on_a, 1)
    assert state(pipelines, on_a)[0] is S.PipelineReady
    assert state(pipelines, on_b)[0] is S.PipelineCreating
    pipelines.unload(on_a)  # only the engine that runs it is asked to stop
    assert drain(a) == [(on_a, DELETE, 1)] and drain(b) == []
    assert state(pipelines, on_a)[:2] == (S.PipelineTerminating, "waiting for dataflow engines a")
    answer(pipelines, "a", on_a, 1, op=DELETE)
    assert state(pipelines, on_a)[0] is S.PipelineTerminated


async def test_with_two_replicas_both_owners_run_it_and_one_leaving_moves_nothing(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(pipeline_replicas=2)
    pipelines = harness.pipelines
    sessions = {n: pipelines.engine_subscribed(n) for n in "abc"}
    name = "tfsimples"
    pipelines.load(chain(name))
    two = ring_order(name, list("abc"))[:2]
    assert sorted(n for n, s in sessions.items() if drain(s)) == sorted(two)
    answer(pipelines, two[0], name, 1)
    assert state(pipelines, name)[:2] == (S.PipelineRebalancing, f"waiting for dataflow engines {two[1]}")
    answer(pipelines, two[1], name, 1)
    assert state(pipelines, name)[0] is S.PipelineReady
    pipelines.engines.unsubscribe(sessions[two[0]])  # the third engine becomes the second owner
    third = next(n for n in "abc" if n not in two)
    assert drain(sessions[third]) == [(name, CREATE, 1)]
    assert state(pipelines, name)[0] is S.PipelineRebalancing, "one owner still serves"
    answer(pipelines, third, name, 1)
    assert state(pipelines, name)[0] is S.PipelineReady


def held(harness: Harness, name: str) -> Route | None:
    return harness.scheduler.routing.held(name + ".pipeline")


def endpoints(route: Route | None) -> set[Endpoint]:
    return set() if route is None else {e for s in route.splits for e in s.endpoints}


async def ack(harness: Harness) -> None:
    await harness.settle()
    harness.envoy.sync()
    await harness.settle()


async def test_a_joining_owner_takes_over_make_before_break_through_envoy_acks(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(gateway=DEFAULT)
    pipelines = harness.pipelines
    name = name_owned_by("b", ["a", "b"])
    a = pipelines.engine_subscribed("a", GATEWAYS["a"])
    pipelines.load(chain(name))
    assert drain(a) == [(name, CREATE, 1)]
    await ack(harness)
    assert held(harness, name) is None, "no route before an engine runs it"
    answer(pipelines, "a", name, 1)
    await ack(harness)
    assert endpoints(held(harness, name)) == {GATEWAYS["a"]}
    assert state(pipelines, name)[0] is S.PipelineReady

    b = pipelines.engine_subscribed("b", GATEWAYS["b"])  # b owns it now
    assert drain(b) == [(name, CREATE, 1)] and drain(a) == []
    await ack(harness)
    assert endpoints(held(harness, name)) == {GATEWAYS["a"]}, "b is not routed before it confirms"
    assert state(pipelines, name)[:2] == (S.PipelineRebalancing, "waiting for dataflow engines b")
    answer(pipelines, "b", name, 1)
    await harness.settle()
    assert endpoints(harness.scheduler.routing.plan(name + ".pipeline")) == {GATEWAYS["a"], GATEWAYS["b"]}
    assert drain(a) == [], "a keeps it until every Envoy routes to b"
    await ack(harness)  # both held; now the route drops a
    assert endpoints(harness.scheduler.routing.plan(name + ".pipeline")) == {GATEWAYS["b"]}
    assert drain(a) == [], "a still runs it until every Envoy dropped it"
    assert state(pipelines, name)[0] is S.PipelineRebalancing
    await ack(harness)
    assert endpoints(held(harness, name)) == {GATEWAYS["b"]}
    assert drain(a) == [(name, DELETE, 1)]
    assert state(pipelines, name)[:2] == (S.PipelineReady, "created pipeline")
    answer(pipelines, "a", name, 1, op=DELETE)
    assert state(pipelines, name)[0] is S.PipelineReady, "a's stop is not about the live version"


async def test_a_dead_owner_is_replaced_and_the_route_keeps_it_until_the_new_one_confirms(
    make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(gateway=DEFAULT)
    pipelines = harness.pipelines
    name = name_owned_by("a", ["a", "b"])
    a = pipelines.engine_subscribed("a", GATEWAYS["a"])
    b = pipelines.engine_subscribed("b")  # registers no gateway: the default address
    pipelines.load(chain(name))
    assert drain(a) == [(name, CREATE, 1)] and drain(b) == []
    answer(pipelines, "a", name, 1)
    await ack(harness)
    pipelines.engines.unsubscribe(a)  # killed: its stream ended
    assert drain(b) == [(name, CREATE, 1)]
    await ack(harness)
    assert endpoints(held(harness, name)) == {GATEWAYS["a"]}, "no empty route while nobody serves"
    assert state(pipelines, name)[:2] == (S.PipelineCreating, "waiting for dataflow engines b")
    answer(pipelines, "b", name, 1)
    assert state(pipelines, name)[:2] == (
        S.PipelineCreating,
        f"waiting for every Envoy to apply the route {name}.pipeline",
    )
    await ack(harness)
    assert endpoints(held(harness, name)) == {DEFAULT}
    assert state(pipelines, name)[0] is S.PipelineReady


async def test_a_new_version_goes_to_the_owners_and_the_route_stays(harness: Harness) -> None:
    pipelines: Pipelines = harness.pipelines
    a = pipelines.engine_subscribed("a")
    pipelines.load(chain())
    answer(pipelines, "a", "tfsimples", 1)
    drain(a)
    pipelines.load(chain(allowCycles=True))
    assert drain(a) == [("tfsimples", CREATE, 2)]
    assert state(pipelines, "tfsimples")[0] is S.PipelineCreating
    answer(pipelines, "a", "tfsimples", 2)
    assert state(pipelines, "tfsimples")[0] is S.PipelineReady
    assert state(pipelines, "tfsimples", 1)[0] is S.PipelineTerminated
