"""TopicKeeper's logic against a fake admin client: what it creates, deletes and reports, and when.

The real broker's side (Tansu losing its state under traffic) is tests/e2e/test_broker_restart.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from apis.kafka import KafkaConfig
from pipelines.kafka_clients import TopicKeeper

CONFIG = KafkaConfig(("k:9092",), partitions=2)
TOPICS = CONFIG.topics
MARKER = TOPICS.marker("seldon-modelgateway")
MINE = [TOPICS.errors, TOPICS.model_inputs("iris"), TOPICS.model_outputs("iris")]


class FakeAdmin:
    """The three admin calls TopicKeeper makes, on a set of topics; every call is recorded."""

    def __init__(self, topics: Iterable[str] = ()) -> None:
        self.topics = set(topics)
        self.calls: list[tuple[str, list[str]]] = []
        self.partitions: dict[str, int] = {}
        self.down = False

    async def list_topics(self) -> list[str]:
        self._reachable()
        self.calls.append(("list", []))
        return sorted(self.topics)

    async def create_topics(self, new: list[NewTopic], timeout_ms: int) -> None:
        self._reachable()
        names = [t.name for t in new]
        self.calls.append(("create", names))
        if set(names) & self.topics:
            raise TopicAlreadyExistsError
        self.topics |= set(names)
        self.partitions.update({t.name: t.num_partitions for t in new})

    async def delete_topics(self, names: list[str], timeout_ms: int) -> None:
        self._reachable()
        self.calls.append(("delete", list(names)))
        self.topics -= set(names)

    def lose_state(self) -> None:
        """A restarted in-memory broker: every topic is gone."""
        self.topics.clear()

    def changes(self) -> list[tuple[str, list[str]]]:
        return [call for call in self.calls if call[0] != "list"]

    def _reachable(self) -> None:
        if self.down:
            raise KafkaConnectionError("broker down")


def keeper(admin: FakeAdmin) -> TopicKeeper:
    return TopicKeeper(admin, CONFIG, "seldon-modelgateway")


async def test_a_first_check_creates_the_missing_topics_and_the_marker() -> None:
    admin = FakeAdmin({TOPICS.errors})
    assert await keeper(admin).keep(MINE) is False
    assert admin.changes() == [("create", sorted([*MINE[1:], MARKER]))]
    assert admin.partitions[MINE[1]] == 2  # the config's partitions
    assert admin.topics == {*MINE, MARKER}


async def test_nothing_is_created_or_deleted_while_the_broker_keeps_its_state() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    await topic_keeper.keep(MINE)
    admin.calls.clear()
    for _ in range(3):
        assert await topic_keeper.keep(MINE) is False
    assert admin.changes() == []


async def test_a_lost_marker_means_lost_state_every_topic_is_made_afresh() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    await topic_keeper.keep(MINE)
    admin.lose_state()
    admin.topics.add(MINE[1])  # a client's metadata request auto-created one already
    admin.calls.clear()
    assert await topic_keeper.keep([*MINE, MINE[0]]) is True  # duplicates are one topic
    wanted = sorted(MINE)
    assert admin.changes() == [
        ("create", sorted(set(wanted) - {MINE[1]})),  # made, so the broker knows each one ...
        ("delete", wanted),  # ... deleted, which clears batches a stale producer left ...
        ("create", sorted([*wanted, MARKER])),  # ... and made afresh, with the marker
    ]
    assert admin.topics == {*MINE, MARKER}
    admin.calls.clear()
    assert await topic_keeper.keep(MINE) is False  # recovered once: the next check is quiet
    assert admin.changes() == []


async def test_a_process_that_never_saw_its_marker_deletes_nothing() -> None:
    # An external cluster's topics, from before this process started: its marker is not there
    # (first start, or someone deleted it); that is no proof of lost state.
    admin = FakeAdmin(MINE)
    assert await keeper(admin).keep(MINE) is False
    assert admin.changes() == [("create", [MARKER])]
    assert admin.topics == {*MINE, MARKER}


async def test_other_components_topics_are_left_alone_on_lost_state() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    await topic_keeper.keep(MINE)
    admin.lose_state()
    others = {TOPICS.pipeline_inputs("p"), TOPICS.marker("dataflow-engine")}
    admin.topics |= others  # another component recreated its own first
    assert await topic_keeper.keep(MINE) is True
    deleted = [name for kind, names in admin.changes() if kind == "delete" for name in names]
    assert not set(deleted) & others
    assert others <= admin.topics


async def test_an_unreachable_broker_raises_and_the_loss_is_still_seen_afterwards() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    await topic_keeper.keep(MINE)
    admin.down = True
    with pytest.raises(KafkaConnectionError):
        await topic_keeper.keep(MINE)
    admin.down = False
    admin.lose_state()
    assert await topic_keeper.keep(MINE) is True
    assert admin.topics == {*MINE, MARKER}


async def test_a_failure_in_the_middle_of_a_recovery_is_finished_by_the_next_check() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    await topic_keeper.keep(MINE)
    admin.lose_state()
    delete = admin.delete_topics

    async def failing_delete(names: list[str], timeout_ms: int) -> None:
        raise KafkaConnectionError("broker gone again")

    admin.delete_topics = failing_delete  # type: ignore[method-assign]
    with pytest.raises(KafkaConnectionError):
        await topic_keeper.keep(MINE)
    admin.delete_topics = delete  # type: ignore[method-assign]
    # The marker was not made: the next check still sees the loss and makes the topics afresh.
    assert MARKER not in admin.topics
    assert await topic_keeper.keep(MINE) is True
    assert ("delete", sorted(MINE)) in admin.changes()


async def test_no_topics_wanted_keeps_only_the_marker() -> None:
    admin = FakeAdmin()
    topic_keeper = keeper(admin)
    assert await topic_keeper.keep([]) is False
    admin.lose_state()
    assert await topic_keeper.keep([]) is True
    assert admin.changes() == [("create", [MARKER]), ("create", [MARKER])]  # no empty delete
