"""Route plans: latest and held plans per route name, the reverse index, one-way confirmations."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from apis.routing import WEIGHT_SCALE, Endpoint, Route, Split
from scheduler.routing import Routing

A = Endpoint("10.0.0.1", 9000, 9500)
B = Endpoint("10.0.0.2", 9000, 9500)


class ManualSink:
    """A RouteSink whose publications complete when the test says Envoy applied them."""

    def __init__(self) -> None:
        self.published: list[tuple[Route, asyncio.Future[None]]] = []

    def publish(self, route: Route) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.published.append((route, future))
        return future

    async def envoy_applies_all(self) -> None:
        for _, future in self.published:
            if not future.done():
                future.set_result(None)
        await asyncio.sleep(0)


def route(name: str, *targets: tuple[str, Endpoint]) -> Route:
    share = WEIGHT_SCALE // len(targets)
    weights = [share] * (len(targets) - 1) + [WEIGHT_SCALE - share * (len(targets) - 1)]
    return Route(name, tuple(Split(t, w, (e,)) for (t, e), w in zip(targets, weights, strict=True)))


def routing() -> tuple[ManualSink, Routing, list[tuple[str, frozenset[str]]]]:
    sink, confirmed = ManualSink(), []
    routing = Routing(
        sink,
        lambda name, _, released: confirmed.append((name, released)),
        lambda name, _, reason: confirmed.append((name, frozenset({"rejected: " + reason}))),
    )
    return sink, routing, confirmed


async def test_a_target_stays_routed_until_every_route_naming_it_is_acked_without_it() -> None:
    sink, plans, confirmed = routing()
    plans.publish(route("iris", ("iris_1", A)))
    plans.publish(route("ab.experiment", ("iris_1", A), ("iris-b_1", B)))
    await sink.envoy_applies_all()
    assert plans.names_of("iris_1") == {"iris", "ab.experiment"}

    plans.publish(route("iris", ("iris_2", B)))  # the model rolls out a new version
    await sink.envoy_applies_all()
    assert plans.routes_to("iris_1", A)  # the experiment still sends traffic there
    assert ("iris", frozenset()) in confirmed

    plans.publish(route("ab.experiment", ("iris_2", B), ("iris-b_1", B)))
    assert plans.routes_to("iris_1", A)  # published, not yet ACKed: Envoy may still route there
    await sink.envoy_applies_all()
    assert not plans.routes_to("iris_1", A)
    assert confirmed[-1] == ("ab.experiment", frozenset({"iris_1"}))


async def test_only_the_latest_publication_confirms() -> None:
    sink, plans, confirmed = routing()
    plans.publish(route("iris", ("iris_1", A)))
    plans.publish(route("iris", ("iris_2", A)))
    first, _ = sink.published[0][1], sink.published[1][1]
    first.set_result(None)  # Envoy ACKed the older one only
    await asyncio.sleep(0)
    assert confirmed == [] and plans.held("iris") is None
    await sink.envoy_applies_all()
    assert confirmed == [("iris", frozenset({"iris_1"}))]
    assert plans.held("iris") == plans.plan("iris") == route("iris", ("iris_2", A))


async def test_an_unchanged_plan_is_not_published_again() -> None:
    sink, plans, _ = routing()
    assert plans.publish(route("iris", ("iris_1", A))) is True
    assert plans.publish(route("iris", ("iris_1", A))) is False
    assert plans.publish(Route("gone")) is False  # removing what was never published publishes nothing
    assert len(sink.published) == 1


async def test_a_removed_route_is_forgotten_once_acked() -> None:
    sink, plans, confirmed = routing()
    plans.publish(route("iris", ("iris_1", A)))
    await sink.envoy_applies_all()
    plans.publish(Route("iris"))
    assert plans.plan("iris") is None and plans.held("iris") is not None
    await sink.envoy_applies_all()
    assert plans.held("iris") is None and not plans.names_of("iris_1")
    assert confirmed[-1] == ("iris", frozenset({"iris_1"}))


def test_importing_the_scheduler_core_loads_no_envoy_module() -> None:
    code = (
        "import sys, scheduler.core, scheduler.api, scheduler.agent_api\n"
        "loaded = sorted(m for m in sys.modules if m == 'envoy' or m.startswith(('envoy.', 'xdsserver')))\n"
        "print(','.join(loaded))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
