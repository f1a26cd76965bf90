"""aiokafka clients built from the shared :class:`apis.kafka.KafkaConfig` (the Kafka edge's one door).

Every producer, consumer and admin client of meshserve is made here, so security (SASL PLAIN/SCRAM,
TLS with an optional client certificate) and the producer/consumer settings (Kafka's names,
validated in ``apis.kafka``) are applied the same way everywhere. Topic creation lives here too:
Tansu, the embedded broker, resets a topic that is created twice, so topics are only ever created
after a listing says they are missing.

A restarted in-memory broker (Tansu) has lost every topic, yet it stores what a client with stale
metadata produces to a topic it does not know; once that topic is created again (by us, or by any
client's metadata request) its offsets start at 0 and each new write collides with one of those
leftover batches and fails, for as many writes as were left. :meth:`TopicKeeper.keep` therefore notices
the restart (the component's marker topic is gone: nothing but the component creates it) and
deletes and recreates the component's topics, which clears the leftovers.

Tansu numbers a group's generations from 0 where Apache Kafka starts at 1, and aiokafka leaves a
group on stop only from generation 1 on: a member of a fresh Tansu group stayed in it after its
consumer stopped, and the next member's join waited for its session to expire (~1.8 session timeouts
measured, decision 0023). :class:`Consumer` leaves at generation 0 too.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.protocol.group import LeaveGroupRequest

from apis.kafka import KafkaConfig
from pipelines.fetch_pacing import FetchPacing

log = structlog.get_logger("meshserve.pipelines.kafka")

# How soon a client notices topics that appeared or vanished (a restarted in-memory broker).
METADATA_MAX_AGE_MS = 5_000
TOPIC_CREATE_TIMEOUT_MS = 60_000
AIOKAFKA_FETCH_MAX_WAIT_MS = 500  # aiokafka's default, when kafka.json sets no fetch.max.wait.ms


def common_options(config: KafkaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": list(config.bootstrap_servers),
        "security_protocol": str(config.security_protocol),
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }
    if config.sasl_mechanism is not None:
        options["sasl_mechanism"] = str(config.sasl_mechanism)
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password()
    if config.uses_tls:
        options["ssl_context"] = ssl_context(config)
    return options


def ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.tls_ca) if config.tls_ca else None)
    if config.tls_cert is not None and config.tls_key is not None:
        context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


def producer_options(config: KafkaConfig) -> dict[str, Any]:
    settings = config.producer
    options = common_options(config)
    options["linger_ms"] = settings.get("linger.ms", 0)
    if "message.max.bytes" in settings:
        options["max_request_size"] = settings["message.max.bytes"]
    if "request.timeout.ms" in settings:
        options["request_timeout_ms"] = settings["request.timeout.ms"]
    if settings.get("compression.type", "none") != "none":
        options["compression_type"] = settings["compression.type"]
    if "acks" in settings:
        acks = settings["acks"]
        options["acks"] = "all" if acks in ("all", "-1") else int(acks)
    if "enable.idempotence" in settings:
        options["enable_idempotence"] = settings["enable.idempotence"]
    return options


def consumer_options(config: KafkaConfig, group_id: str | None) -> dict[str, Any]:
    """``group_id`` None: a reader that assigns partitions itself (``meshserve pipeline inspect``)."""
    settings = config.consumer_settings
    options = common_options(config)
    options.update(
        group_id=group_id,
        enable_auto_commit=False,  # offsets are committed once a batch's results are written
        auto_offset_reset=settings["auto.offset.reset"],
    )
    renames = {
        "session.timeout.ms": "session_timeout_ms",
        "heartbeat.interval.ms": "heartbeat_interval_ms",
        "max.poll.interval.ms": "max_poll_interval_ms",
        "fetch.max.wait.ms": "fetch_max_wait_ms",
    }
    options.update({ours: settings[theirs] for theirs, ours in renames.items() if theirs in settings})
    if "message.max.bytes" in settings:
        options["max_partition_fetch_bytes"] = settings["message.max.bytes"]
        options["fetch_max_bytes"] = max(settings["message.max.bytes"], 52_428_800)
    return options


def producer(config: KafkaConfig) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_options(config))


class Consumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's consumer, leaving its group when stopped at generation 0 too (module docstring),
    whose fetches wait briefly at the broker while records flow (:mod:`pipelines.fetch_pacing`)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._pacing = FetchPacing(options.get("fetch_max_wait_ms", AIOKAFKA_FETCH_MAX_WAIT_MS))

    async def getmany(self, *partitions: Any, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        batches = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        fetcher = getattr(self, "_fetcher", None)
        if fetcher is not None:
            # aiokafka's fetcher reads this (private) attribute for each fetch request it builds;
            # tests/pipelines/test_fetch_pacing.py checks on a real broker that it takes effect.
            fetcher._fetch_max_wait_ms = self._pacing.after_poll(bool(batches))
        return batches

    async def stop(self) -> None:
        coordinator = getattr(self, "_coordinator", None)
        if coordinator is not None and hasattr(coordinator, "_maybe_leave_group"):
            # stop() closes the coordinator: it lets a join in flight end, then tries to leave.
            coordinator._maybe_leave_group = _leaving_at_generation_zero(coordinator)
        await super().stop()


def _leaving_at_generation_zero(coordinator: Any) -> Callable[[], Awaitable[None]]:
    aiokafkas = coordinator._maybe_leave_group  # leaves from generation 1 on, then forgets the member

    async def leave() -> None:
        if coordinator.generation == 0 and coordinator._group_instance_id is None:
            try:
                await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
            except KafkaError as error:  # best effort, as aiokafka's own: the session expires anyway
                log.debug("leaving the group failed", group=coordinator.group_id, error=repr(error))
        await aiokafkas()

    return leave


def consumer(config: KafkaConfig, group_id: str, assignor: object | None = None) -> Consumer:
    """A group member; ``assignor`` (aiokafka's assignor interface) replaces round-robin."""
    options = consumer_options(config, group_id)
    if assignor is not None:
        options["partition_assignment_strategy"] = (assignor,)
    return Consumer(**options)


def admin(config: KafkaConfig) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**common_options(config))


async def ensure_topics(client: AIOKafkaAdminClient, config: KafkaConfig, topics: Iterable[str]) -> list[str]:
    """Create those of ``topics`` the broker does not list; returns the ones created.

    Raises :class:`aiokafka.errors.KafkaError` (or OSError) when the broker cannot be reached.
    """
    existing = set(await client.list_topics())
    missing = sorted(set(topics) - existing)
    if not missing:
        return []
    new = [NewTopic(t, config.partitions, config.replication_factor) for t in missing]
    # Another gateway may win the race: the topics exist then, which is all we need.
    with contextlib.suppress(TopicAlreadyExistsError):
        await client.create_topics(new, timeout_ms=TOPIC_CREATE_TIMEOUT_MS)
    log.info("topics created", topics=missing)
    return missing


class TopicKeeper:
    """Keeps one component's topics (see the module docstring): :meth:`keep` creates what is missing
    and, after the broker lost its state under the running component, recreates every topic."""

    def __init__(self, client: AIOKafkaAdminClient, config: KafkaConfig, component: str) -> None:
        self._client = client
        self._config = config
        self._marker = config.topics.marker(component)
        self._marked = False  # this process made or saw its marker: from now on, gone means lost

    async def keep(self, topics: Iterable[str]) -> bool:
        """True when the broker had lost its state and ``topics`` were made afresh (the caller
        restarts its clients: their metadata and group state are stale). Raises KafkaError/OSError
        when the broker cannot be reached."""
        wanted = sorted(set(topics))
        existing = set(await self._client.list_topics())
        lost = self._marked and self._marker not in existing
        if lost and wanted:
            # Tansu deletes a topic's leftover batches only with a topic it knows: so each is made
            # first (when no metadata request made it already), then deleted, then made afresh.
            await ensure_topics(self._client, self._config, wanted)
            await self._client.delete_topics(wanted, timeout_ms=TOPIC_CREATE_TIMEOUT_MS)
            log.warning("the broker lost its state; topics made afresh", topics=wanted)
        elif lost:
            log.warning("the broker lost its state; this component had no topics yet")
        await ensure_topics(self._client, self._config, [*wanted, self._marker])
        self._marked = True
        return lost


async def refresh_metadata(producer: AIOKafkaProducer) -> None:
    """Forget what the producer knew of partitions (a broker that lost its state has new ones)."""
    await producer.client.force_metadata_update()


async def delete_topics(client: AIOKafkaAdminClient, topics: Iterable[str]) -> None:
    existing = set(await client.list_topics())
    present = sorted(set(topics) & existing)
    if present:
        await client.delete_topics(present, timeout_ms=TOPIC_CREATE_TIMEOUT_MS)
        log.info("topics deleted", topics=present)


async def close_quietly(*clients: AIOKafkaProducer | AIOKafkaConsumer | AIOKafkaAdminClient) -> None:
    """Stop clients on the way out; a broker already gone must not hide the error that led here."""
    for client in clients:
        try:
            if isinstance(client, AIOKafkaAdminClient):
                await client.close()
            else:
                await client.stop()
        except (TimeoutError, KafkaError, OSError) as error:
            log.debug("closing a Kafka client failed", error=repr(error))
