"""Which model gateway replica consumes which partition: Kafka groups, split by consistent hashing.

Every replica joins every bucket's consumer group (``<ns>-seldon-modelgateway-<bucket>``, as the
reference's replicas do), so Kafka's group protocol decides who reads what: a partition is read by
one member at a time, a member that leaves or stops heartbeating (SIGKILL) has its partitions
handed to the others at the next rebalance, and they resume from the last committed offset.
The group leader computes the split with :class:`RingAssignor`: each topic partition goes to the
first member met on a ``hashring`` ring of the members' replica names (sent in the join request's
user data) from the hash of ``<topic>/<partition>``. So the split depends only on the partitions
and the set of replica names, not on which member leads or joined first; a joining or leaving
replica moves about 1/N of the partitions; and with one partition per topic each model is read by
one replica, models spread over the replicas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

from apis.hash_ring import ring_order

ASSIGNOR_NAME = "meshserve-ring"
PROTOCOL_VERSION = 0
Split = dict[str, dict[str, list[int]]]  # member id -> topic -> partitions


@dataclass(frozen=True)
class Member:
    """One group member as its join request describes it."""

    replica: str  # the model gateway's --name; empty when the member sent none
    topics: frozenset[str]


def split(partitions: Mapping[str, int], members: Mapping[str, Member]) -> Split:
    """Each topic partition to one member subscribed to the topic (none subscribed: unassigned).

    ``partitions`` maps a topic to its partition count. Members sharing a replica name (two
    replicas left at the default ``--name``, or a foreign member sending none) are told apart by
    their member id, which Kafka makes unique: still one reader per partition, only less stable.
    """
    shared = Counter(m.replica for m in members.values())
    node = {
        mid: m.replica if m.replica and shared[m.replica] == 1 else f"{m.replica}/{mid}"
        for mid, m in members.items()
    }
    member_of = {name: mid for mid, name in node.items()}
    result: Split = {mid: {} for mid in members}
    for topic, count in sorted(partitions.items()):
        readers = [node[mid] for mid, m in members.items() if topic in m.topics]
        if not readers:
            continue
        for partition in range(count):
            owner = member_of[ring_order(f"{topic}/{partition}", readers)[0]]
            result[owner].setdefault(topic, []).append(partition)
    return result


class RingAssignor:
    """aiokafka's partition-assignor interface (``name``, ``metadata``, ``assign``, ``on_assignment``)
    for one replica: it announces the replica's name and, when this member leads, splits by
    :func:`split`."""

    name = ASSIGNOR_NAME

    def __init__(self, replica: str) -> None:
        self.replica = replica

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(PROTOCOL_VERSION, sorted(topics), self.replica.encode())

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        described = {mid: _member(metadata) for mid, metadata in members.items()}
        topics = {t for m in described.values() for t in m.topics}
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        return {
            mid: ConsumerProtocolMemberAssignment(
                PROTOCOL_VERSION,
                [ConsumerProtocolMemberAssignment.Assignment(t, p) for t, p in sorted(owned.items())],
                b"",
            )
            for mid, owned in split(counts, described).items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Nothing to remember: the split is recomputed from scratch at every rebalance."""


def _member(metadata: ConsumerProtocolMemberMetadata) -> Member:
    try:
        replica = bytes(metadata.user_data or b"").decode()
    except UnicodeDecodeError:  # not one of ours: told apart by member id
        replica = ""
    return Member(replica, frozenset(metadata.subscription))
