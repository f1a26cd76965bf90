"""The model gateway's core: which models it serves, their topics, and what one message becomes.

Contract:

- :meth:`ModelGateway.want` / :meth:`ModelGateway.drop` (called by the scheduler follower) only
  change the desired set and wake the keeper; they never wait for Kafka. One keeper task
  (:meth:`ModelGateway.keep`) makes Kafka match it: it creates missing topics (each model's inputs
  and outputs, and the errors topic), points each bucket's consumer at its models' input topics,
  and deletes a dropped model's topics only when its ``dataflow.cleanTopicsOnDelete`` asked for
  it. It runs again every ``topic_check_seconds``, so a broker that lost its topics (the embedded
  one keeps them in memory) gets them back within that period plus a consumer re-join.
- :meth:`ModelGateway.handle` turns one input record into one output record (same key, same
  partition, the request's headers plus the answer's ``x-*``) or one errors-topic record (the
  same key and headers plus ``seldon-pipeline-errors: <model>``, the reason as value), or raises
  :class:`~pipelines.modelgateway.consumers.NotWritten` when Kafka did not take it (the record is
  read again: at least once, see ``consumers.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from apis.kafka import (
    AUDIT_HEADER,
    ERROR_HEADER,
    INFER_TYPE_HEADER,
    KafkaConfig,
    consumer_bucket,
    consumer_group,
)
from apis.names import REQUEST_ID_HEADER, ROUTE_HEADER
from pipelines import kafka_clients, service
from pipelines.modelgateway.config import SUBSCRIBER_NAME, ModelGatewayConfig
from pipelines.modelgateway.consumers import Bucket, NotWritten
from pipelines.modelgateway.envoy import Answer, CallFailed, EnvoyClient
from pipelines.modelgateway.payloads import BadPayload, decode

log = structlog.get_logger("meshserve.pipelines.modelgateway")
Headers = list[tuple[str, bytes]]


class ModelGateway:
    """Serves the input topics of the models the scheduler declares (see the module docstring)."""

    def __init__(
        self,
        config: ModelGatewayConfig,
        kafka: KafkaConfig,
        envoy: EnvoyClient,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._config = config
        self._kafka = kafka
        self._topics = kafka.topics
        self._envoy = envoy
        self._wanted: dict[str, bool] = {}  # model -> clean its topics when it is dropped
        self._to_clean: set[str] = set()
        self._buckets: dict[int, Bucket] = {}
        self._changed = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self.topics_ready = False  # the last check found (or made) every topic
        self.messages = Counter(
            "meshserve_modelgateway_messages",
            "Model input messages handled, by model and outcome",
            ["model", "outcome"],
            registry=registry,
        )
        self._owned: dict[str, frozenset[TopicPartition]] = {}  # group -> partitions read here
        self.owned_partitions = Gauge(
            "meshserve_modelgateway_owned_partitions",
            "Input-topic partitions this replica reads, by model (the group split, assignment.py)",
            ["model"],
            registry=registry,
        )

    # -- what to serve (the scheduler follower) ----------------------------------------------------

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def want(self, model: str, *, clean_on_delete: bool) -> None:
        if self._wanted.get(model) != clean_on_delete:
            self._wanted[model] = clean_on_delete
            self._to_clean.discard(model)
            self._changed.set()

    def drop(self, model: str) -> None:
        clean = self._wanted.pop(model, None)
        if clean is None:
            return
        if clean:
            self._to_clean.add(model)
        self._changed.set()

    def replace(self, wanted: dict[str, bool]) -> None:
        """The scheduler's full list (on every reconnect): what is not in it is dropped."""
        for model in set(self._wanted) - set(wanted):
            self.drop(model)
        for model, clean in wanted.items():
            self.want(model, clean_on_delete=clean)

    # -- Kafka ---------------------------------------------------------------------------------------

    async def keep(self) -> None:
        """Run until cancelled: keep topics and consumers in line with the wanted models."""
        producer = kafka_clients.producer(self._kafka)
        admin = kafka_clients.admin(self._kafka)
        # The marker is per replica: each must see the loss itself (one replica remaking a shared
        # marker would hide it from the others).
        keeper = kafka_clients.TopicKeeper(admin, self._kafka, f"{SUBSCRIBER_NAME}-{self._config.name}")
        try:
            await service.connect([admin, producer], self._kafka, self._config.topic_check_seconds)
            self._producer = producer
            while True:
                self._changed.clear()
                await self._reconcile(admin, keeper, producer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._config.topic_check_seconds)
        finally:
            self._producer = None
            for bucket in self._buckets.values():
                await bucket.close()
            self._buckets.clear()
            await kafka_clients.close_quietly(producer, admin)

    async def _reconcile(
        self, admin: AIOKafkaAdminClient, keeper: kafka_clients.TopicKeeper, producer: AIOKafkaProducer
    ) -> None:
        wanted = sorted(self._wanted)
        topics = [self._topics.errors]
        for model in wanted:
            topics += [self._topics.model_inputs(model), self._topics.model_outputs(model)]
        try:
            lost = await keeper.keep(topics)
            if lost:  # consumers and producer knew the old broker's groups and partitions
                for bucket in self._buckets.values():
                    await bucket.close()
                self._buckets.clear()
                await kafka_clients.refresh_metadata(producer)
        except (KafkaError, OSError) as error:
            self.topics_ready = False
            log.warning("topic check failed; retrying", error=repr(error))
            return
        self.topics_ready = True
        # Consumers leave a dropped model's topic before it is deleted: a consumer's metadata
        # request for a topic it still follows would create the topic again.
        await self._follow(wanted)
        await self._clean(admin)

    async def _clean(self, admin: AIOKafkaAdminClient) -> None:
        for model in sorted(self._to_clean):
            try:
                await kafka_clients.delete_topics(
                    admin, [self._topics.model_inputs(model), self._topics.model_outputs(model)]
                )
            except (KafkaError, OSError) as error:
                log.warning("deleting topics failed; retrying", model=model, error=repr(error))
                return
            self._to_clean.discard(model)

    async def _follow(self, models: Sequence[str]) -> None:
        per_bucket: dict[int, set[str]] = {}
        for model in models:
            bucket = consumer_bucket(model, self._config.max_consumers)
            per_bucket.setdefault(bucket, set()).add(self._topics.model_inputs(model))
        for index, topics in per_bucket.items():
            if index not in self._buckets:
                group = consumer_group(self._kafka, SUBSCRIBER_NAME, index)
                self._buckets[index] = Bucket(
                    self._kafka,
                    group,
                    self.handle,
                    workers=self._config.workers,
                    replica=self._config.name,
                    owned=self._record_owned,
                    skip=self.audit_copy,
                )
            self._buckets[index].follow(frozenset(topics))
        for index in set(self._buckets) - set(per_bucket):
            await self._buckets.pop(index).close()

    def _record_owned(self, group: str, partitions: frozenset[TopicPartition]) -> None:
        before = {p.topic for p in self._owned.get(group, frozenset())}
        self._owned[group] = partitions
        per_model: dict[str, int] = {}
        for partition in partitions:
            model = self._topics.model_of_input(partition.topic)
            if model is not None:
                per_model[model] = per_model.get(model, 0) + 1
        for topic in before:
            model = self._topics.model_of_input(topic)
            if model is not None and model not in per_model:
                self.owned_partitions.remove(model)
        for model, count in per_model.items():
            self.owned_partitions.labels(model).set(count)
        if partitions or before:
            log.info("partitions read here", group=group, models=sorted(per_model))

    # -- one message -------------------------------------------------------------------------------

    def audit_copy(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """A copy of a call the dataflow engine made itself (counted; not called again)."""
        model = self._topics.model_of_input(record.topic)
        if model is None or _header(list(record.headers), AUDIT_HEADER) is None:
            return False  # handle() says what else it is
        self.messages.labels(model, "audit_copy").inc()
        return True

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        model = self._topics.model_of_input(record.topic)
        if model is None:  # not ours: a bucket only follows model input topics
            return
        headers = _with_request_id(list(record.headers), record.key)
        if _header(headers, AUDIT_HEADER) is not None:  # the engine called the model already
            self.messages.labels(model, "audit_copy").inc()
            return
        infer_type = _header(headers, INFER_TYPE_HEADER)
        try:
            call = decode(record.value, infer_type.decode(errors="replace") if infer_type else None)
            answer = await self._envoy.infer(model, call, [h for h in headers if h[0] != INFER_TYPE_HEADER])
        except BadPayload as problem:
            await self._fail(record, model, headers, f"model {model}: bad request: {problem}", "bad_payload")
            return
        except CallFailed as problem:
            await self._fail(record, model, headers, str(problem), "model_error")
            return
        await self._answer(record, model, headers, answer)

    async def _answer(
        self, record: ConsumerRecord[bytes, bytes], model: str, headers: Headers, answer: Answer
    ) -> None:
        merged = _merge(headers, answer.headers)
        merged.append((INFER_TYPE_HEADER, str(answer.infer_type).encode()))
        topic = self._topics.model_outputs(model)
        try:
            await self._send(topic, record, answer.value, merged, same_partition=True, model=model)
        except NotWritten as failure:
            if not isinstance(failure.__cause__, MessageSizeTooLargeError):
                raise
            # Reading it again would fail the same way forever: the reason goes to the errors topic.
            reason = f"model {model}: the answer ({len(answer.value)} bytes) is too large for Kafka"
            await self._fail(record, model, headers, reason, "answer_too_large")
            return
        self.messages.labels(model, "ok").inc()

    async def _fail(
        self, record: ConsumerRecord[bytes, bytes], model: str, headers: Headers, reason: str, outcome: str
    ) -> None:
        log.info("model call failed; to the errors topic", model=model, reason=reason[:300])
        failed = [
            *(h for h in headers if h[0] not in (ERROR_HEADER, INFER_TYPE_HEADER)),
            (ERROR_HEADER, model.encode()),
        ]
        await self._send(
            self._topics.errors, record, reason.encode(), failed, same_partition=False, model=model
        )
        self.messages.labels(model, outcome).inc()

    async def _send(
        self,
        topic: str,
        record: ConsumerRecord[bytes, bytes],
        value: bytes,
        headers: Headers,
        *,
        same_partition: bool,
        model: str,
    ) -> None:
        """Written, or :class:`NotWritten` after the producer's own retries (the record is read again)."""
        producer = self._producer
        if producer is None:
            raise NotWritten("no producer yet")
        try:
            partition = None
            if same_partition and record.partition in await producer.partitions_for(topic):
                partition = record.partition
            await producer.send_and_wait(topic, value, key=record.key, partition=partition, headers=headers)
        except (KafkaError, OSError) as error:
            log.warning("could not write a result; the input is read again", topic=topic, error=repr(error))
            self.messages.labels(model, "produce_failed").inc()
            raise NotWritten(topic) from error


def _header(headers: Headers, name: str) -> bytes | None:
    for key, value in reversed(headers):
        if key.lower() == name:
            return value
    return None


def _with_request_id(headers: Headers, key: bytes | None) -> Headers:
    """Header names lower-cased; ``x-request-id`` from the key when the message has none."""
    lowered = [(k.lower(), v) for k, v in headers]
    if key and _header(lowered, REQUEST_ID_HEADER) is None:
        lowered.append((REQUEST_ID_HEADER, key))
    return lowered


def _merge(request: Headers, answer: Headers) -> Headers:
    """The request's headers, the answer's replacing same-named ones; routes grow (``:a_1: :b_1:``)."""
    answered = {k for k, _ in answer}
    merged = [(k, v) for k, v in request if k not in answered]
    previous_route = _header(request, ROUTE_HEADER)
    for key, value in answer:
        if key == ROUTE_HEADER and previous_route:
            value = previous_route + b" " + value
        merged.append((key, value))
    return merged
