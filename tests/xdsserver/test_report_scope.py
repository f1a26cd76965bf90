"""Which clusters Envoy is asked to report (xdsserver/report_scope.py): follows the set, debounced."""

from __future__ import annotations

import pytest

from xdsserver import report_scope
from xdsserver.report_scope import MAX_DELAY_S, SETTLE_S, ReportScope


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Targets:
    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.computed = 0

    def __call__(self) -> set[str]:
        self.computed += 1
        return set(self.names)


def test_the_first_ask_lists_both_clusters_of_every_target_at_once() -> None:
    scope = ReportScope(Targets("b_1", "a_2"), Clock())
    assert scope.clusters() == ("a_2_http", "a_2_grpc", "b_1_http", "b_1_grpc")
    assert scope.generation == 1


def test_nothing_to_report_is_an_empty_list_that_never_moves() -> None:
    clock = Clock()
    scope = ReportScope(Targets(), clock)
    assert scope.clusters() == () and scope.generation == 0
    scope.changed()
    clock.now += SETTLE_S
    assert scope.clusters() == () and scope.generation == 0


def test_a_burst_of_changes_is_one_recomputation_once_it_settles() -> None:
    clock, targets = Clock(), Targets()
    scope = ReportScope(targets, clock)
    scope.clusters()
    for index in range(10_000):  # 10,000 loads, each a change, 1 ms apart
        targets.names.add(f"m{index}_1")
        scope.changed()
        clock.now += 0.001
        assert scope.clusters() == ()  # not settled yet
    assert targets.computed == 1
    clock.now += SETTLE_S
    assert len(scope.clusters()) == 20_000 and scope.generation == 1
    assert scope.clusters() is scope.clusters()
    assert targets.computed == 2


def test_loads_and_unloads_move_the_list() -> None:
    clock, targets = Clock(), Targets("iris_1")
    scope = ReportScope(targets, clock)
    assert scope.clusters() == ("iris_1_http", "iris_1_grpc")
    targets.names.add("tfsimple_1")
    scope.changed()
    clock.now += SETTLE_S
    assert "tfsimple_1_http" in scope.clusters() and scope.generation == 2
    targets.names.clear()
    scope.changed()
    clock.now += SETTLE_S
    assert scope.clusters() == () and scope.generation == 3


def test_a_change_that_moves_nothing_keeps_the_generation() -> None:
    clock, targets = Clock(), Targets("iris_1")
    scope = ReportScope(targets, clock)
    scope.clusters()
    scope.changed()
    clock.now += SETTLE_S
    assert scope.clusters() == ("iris_1_http", "iris_1_grpc") and scope.generation == 1
    assert targets.computed == 2


def test_changes_that_never_stop_still_go_out_after_the_longest_delay() -> None:
    clock, targets = Clock(), Targets()
    scope = ReportScope(targets, clock)
    scope.clusters()
    targets.names.add("iris_1")
    while clock.now < 1000.0 + MAX_DELAY_S - SETTLE_S:
        scope.changed()
        clock.now += SETTLE_S / 2
        assert scope.clusters() == ()
    clock.now = 1000.0 + MAX_DELAY_S
    scope.changed()
    assert scope.clusters() == ("iris_1_http", "iris_1_grpc")


def test_the_list_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_scope, "MAX_SCOPED_CLUSTERS", 4)
    scope = ReportScope(Targets("a_1", "b_1", "c_1"), Clock())
    assert scope.clusters() == ("a_1_http", "a_1_grpc", "b_1_http", "b_1_grpc")
