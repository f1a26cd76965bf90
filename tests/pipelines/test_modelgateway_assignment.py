"""How model gateway replicas split input partitions (assignment.py); what a batch commits (consumers.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberMetadata
from aiokafka.structs import OffsetAndMetadata

from apis.hash_ring import ring_order
from apis.kafka import KafkaConfig
from pipelines.modelgateway.assignment import ASSIGNOR_NAME, Member, RingAssignor, Split, split
from pipelines.modelgateway.consumers import Bucket, NotWritten, _Listener

TOPICS = {f"seldon.default.model.m{i}.inputs": 1 for i in range(300)}


def members(*names: str, topics: Mapping[str, int] = TOPICS) -> dict[str, Member]:
    return {f"member-{name}": Member(name, frozenset(topics)) for name in names}


def owners(result: Split) -> dict[tuple[str, int], str]:
    """Partition -> member reading it; fails if a partition has two readers."""
    seen: dict[tuple[str, int], str] = {}
    for member, topics in result.items():
        for topic, partitions in topics.items():
            for partition in partitions:
                assert (topic, partition) not in seen, f"{topic}/{partition} has two readers"
                seen[(topic, partition)] = member
    return seen


def test_every_partition_has_exactly_one_reader_and_the_replicas_share_them() -> None:
    topics = {"seldon.default.model.a.inputs": 4, "seldon.default.model.b.inputs": 1}
    result = owners(split(topics, members("gw-a", "gw-b", topics=topics)))
    assert set(result) == {("seldon.default.model.a.inputs", p) for p in range(4)} | {
        ("seldon.default.model.b.inputs", 0)
    }
    spread = owners(split(TOPICS, members("gw-a", "gw-b", "gw-c")))
    counts = sorted(list(spread.values()).count(m) for m in ("member-gw-a", "member-gw-b", "member-gw-c"))
    assert counts[0] >= 50, counts  # 300 partitions over 3 replicas: each well above a sixth


def test_the_split_follows_the_ring_of_replica_names_not_member_ids_or_order() -> None:
    first = split(TOPICS, members("gw-a", "gw-b"))
    renamed = {
        "zz-other-id-b": Member("gw-b", frozenset(TOPICS)),
        "aa-other-id-a": Member("gw-a", frozenset(TOPICS)),
    }
    second = split(TOPICS, renamed)
    assert first["member-gw-a"] == second["aa-other-id-a"] and first["member-gw-b"] == second["zz-other-id-b"]
    for (topic, partition), member in owners(first).items():
        assert ring_order(f"{topic}/{partition}", ["gw-a", "gw-b"])[0] == member.removeprefix("member-")


def test_a_joining_replica_takes_about_a_third_and_nothing_else_moves() -> None:
    before = owners(split(TOPICS, members("gw-a", "gw-b")))
    after = owners(split(TOPICS, members("gw-a", "gw-b", "gw-c")))
    moved = [p for p in before if before[p] != after[p]]
    assert all(after[p] == "member-gw-c" for p in moved)
    assert 0.15 * len(TOPICS) < len(moved) < 0.5 * len(TOPICS)


def test_a_leaving_replica_hands_over_only_its_own_partitions() -> None:
    before = owners(split(TOPICS, members("gw-a", "gw-b", "gw-c")))
    after = owners(split(TOPICS, members("gw-a", "gw-c")))
    assert set(after) == set(before)
    assert all(before[p] == "member-gw-b" for p in before if before[p] != after[p])


def test_a_member_reads_only_topics_it_subscribed_and_unsubscribed_topics_stay_unassigned() -> None:
    result = split(
        {"t1": 2, "t2": 1, "t3": 1},
        {"m1": Member("gw-a", frozenset({"t1"})), "m2": Member("gw-b", frozenset({"t1", "t2"}))},
    )
    assert "t2" not in result["m1"] and "t3" not in result["m1"] and "t3" not in result["m2"]
    assert result["m2"]["t2"] == [0]
    assert sorted(result["m1"].get("t1", []) + result["m2"].get("t1", [])) == [0, 1]


@pytest.mark.parametrize("name", ["", "gw"])
def test_members_sharing_a_name_still_get_one_reader_per_partition(name: str) -> None:
    shared = {f"id-{i}": Member(name, frozenset(TOPICS)) for i in range(3)}
    result = owners(split(TOPICS, shared))
    assert len(result) == len(TOPICS) and len(set(result.values())) == 3


class FakeCluster:
    def __init__(self, partitions: Mapping[str, int]) -> None:
        self._partitions = partitions

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        count = self._partitions.get(topic)
        return None if count is None else set(range(count))


def test_the_assignor_announces_its_replica_and_splits_as_the_leader() -> None:
    a, b = RingAssignor("gw-a"), RingAssignor("gw-b")
    assert a.name == b.name == ASSIGNOR_NAME
    # What the coordinator relays: each member's metadata, encoded and decoded as on the wire.
    wire = {
        "m-a": ConsumerProtocol.METADATA.decode(a.metadata({"t1", "t2"}).encode()),
        "m-b": ConsumerProtocol.METADATA.decode(b.metadata(["t1"]).encode()),
        "m-foreign": ConsumerProtocolMemberMetadata(0, ["t1"], b"\xff\xfe"),  # not UTF-8
    }
    cluster = FakeCluster({"t1": 6, "t2": 2})
    assignments = a.assign(cluster, wire)
    assert assignments == b.assign(cluster, wire)  # whoever leads
    got = {
        member: {t: list(p) for t, p in ConsumerProtocol.ASSIGNMENT.decode(value.encode()).assignment}
        for member, value in assignments.items()
    }
    assert sorted(p for m in got.values() for p in m.get("t1", [])) == list(range(6))
    assert got["m-a"]["t2"] == [0, 1] and "t2" not in got["m-b"]
    a.on_assignment(assignments["m-a"])  # nothing kept between rebalances


def record(partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t", partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


class Done(Exception):
    pass


class FakeConsumer:
    """Hands out one batch, then ends the loop; records commits and seeks."""

    def __init__(self, batch: list[ConsumerRecord[bytes, bytes]], assigned: set[int] | None = None) -> None:
        self._batches = [batch]
        self._assigned = {0, 1} if assigned is None else assigned
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[object]]:
        if not self._batches:
            raise Done
        batch = self._batches.pop()
        assert len(batch) <= max_records
        return {
            TopicPartition("t", 0): [r for r in batch if r.partition == 0],
            TopicPartition("t", 1): [r for r in batch if r.partition == 1],
        }

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", p) for p in self._assigned}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


async def test_a_record_whose_result_was_not_written_is_read_again_and_nothing_after_it_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipelines.modelgateway.consumers.RETRY_SECONDS", 0.0)
    failing = {(0, 11), (0, 13)}

    async def handler(r: ConsumerRecord[bytes, bytes]) -> None:
        if (r.partition, r.offset) in failing:
            raise NotWritten("t")
        if r.offset == 21:
            raise RuntimeError("a bug in the handler")  # logged and committed: not read forever

    bucket = Bucket(KafkaConfig(("k:1",)), "g", handler, workers=8, replica="gw-a")
    consumer = FakeConsumer([record(0, o) for o in (10, 11, 12, 13)] + [record(1, o) for o in (20, 21)])
    with pytest.raises(Done):
        await bucket._consume(consumer)
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    assert consumer.commits == [{p0: OffsetAndMetadata(11, ""), p1: OffsetAndMetadata(22, "")}]
    assert consumer.seeks == [(p0, 11)]


async def test_a_partition_given_away_mid_batch_is_not_sought_its_new_reader_reads_it() -> None:
    async def handler(r: ConsumerRecord[bytes, bytes]) -> None:
        raise NotWritten("t")

    bucket = Bucket(KafkaConfig(("k:1",)), "g", handler, workers=8, replica="gw-a")
    consumer = FakeConsumer([record(0, 5)], assigned={1})
    with pytest.raises(Done):
        await bucket._consume(consumer)
    assert consumer.commits == [{TopicPartition("t", 0): OffsetAndMetadata(5, "")}] and consumer.seeks == []


async def test_each_rebalance_reports_the_partitions_read_here() -> None:
    reports: list[tuple[str, frozenset[TopicPartition]]] = []

    def owned(group: str, partitions: frozenset[TopicPartition]) -> None:
        reports.append((group, partitions))

    bucket = Bucket(KafkaConfig(("k:1",)), "g", handler_never, workers=1, replica="gw-a", owned=owned)
    listener = _Listener(bucket._report, FakeConsumer([], assigned={1}))
    await listener.on_partitions_revoked(set())
    await listener.on_partitions_assigned(set())
    await bucket.close()  # never started: reports nothing read
    assert reports == [("g", frozenset()), ("g", frozenset({TopicPartition("t", 1)})), ("g", frozenset())]


async def handler_never(r: ConsumerRecord[bytes, bytes]) -> None:
    raise AssertionError("no record expected")
