"""The engine's pipelines on Kafka: topics made and feeds started when one starts, stopped when it goes.

Called by :class:`pipelines.engine.control.ChainerFollower` (one update at a time). Starting makes
the pipeline's topics (its inputs and outputs, every step's model topics, the errors topic) before
the scheduler is told it runs, and starts its :class:`pipelines.engine.feed.PipelineFeed`; a new
version replaces the old one's compiled graph and feed. Stopping ends the feed and, with
``dataflow.cleanTopicsOnDelete``, deletes the pipeline's own two topics (never the model topics,
which other pipelines and the model gateway share; §5.1).

A feed is cancelled at once, but its consumer's shutdown can wait for a group join in progress (up
to the broker's session timeout, ~10 s): after :data:`FEED_STOP_WAIT_SECONDS` it finishes in the
background, so one pipeline's stop never holds up the scheduler's next update to this engine.

:meth:`Engine.keep` checks every running pipeline's topics every ``TOPIC_CHECK_SECONDS``; after the
broker lost its state (a restarted embedded broker) they are made afresh, the producer forgets the
old partitions and every feed starts again with a new consumer (its group and offsets are gone; it
reads the new topics from the start).
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from apis.kafka import KafkaConfig
from pipelines import kafka_clients
from pipelines.engine.feed import PipelineFeed
from pipelines.engine.runner import Runner, Running
from pipelines.model import Pipeline

log = structlog.get_logger("meshserve.pipelines.engine")
FEED_STOP_WAIT_SECONDS = 1.0
TOPIC_CHECK_SECONDS = 2.0


class TopicsUnavailable(LookupError):
    """Kafka could not make the pipeline's topics; the message says why."""


class Engine:
    def __init__(
        self,
        runner: Runner,
        kafka: KafkaConfig,
        admin: AIOKafkaAdminClient,
        *,
        engine: str,
        pending_seconds: float,
    ) -> None:
        self._runner = runner
        self._kafka = kafka
        self._admin = admin
        self._keeper = kafka_clients.TopicKeeper(admin, kafka, engine)
        self._pending_seconds = pending_seconds
        self._feeds: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()  # cancelled feeds still closing their consumer

    def topics_of(self, pipeline: Pipeline) -> list[str]:
        topics = self._kafka.topics
        names = [topics.errors, topics.pipeline_inputs(pipeline.name), topics.pipeline_outputs(pipeline.name)]
        for model in sorted(pipeline.models):
            names += [topics.model_inputs(model), topics.model_outputs(model)]
        return names

    async def start(self, pipeline: Pipeline) -> None:
        try:
            await kafka_clients.ensure_topics(self._admin, self._kafka, self.topics_of(pipeline))
        except (KafkaError, OSError) as error:
            raise TopicsUnavailable(
                f"pipeline {pipeline.name}: its Kafka topics could not be made: {error!r}"
            ) from error
        running = await self._runner.load(pipeline)
        await self._start_feed(running)

    async def _start_feed(self, running: Running) -> None:
        name = running.pipeline.name
        await self._stop_feed(name)
        feed = PipelineFeed(self._runner, self._kafka, running, pending_seconds=self._pending_seconds)
        self._feeds[name] = asyncio.create_task(feed.run(), name=f"feed-{name}")

    async def keep(self, producer: AIOKafkaProducer) -> None:
        """Until cancelled: the running pipelines' topics kept (see the module docstring)."""
        while True:
            await asyncio.sleep(TOPIC_CHECK_SECONDS)
            running = list(self._runner.running.values())
            topics = {t for r in running for t in self.topics_of(r.pipeline)}
            try:
                if await self._keeper.keep(topics):
                    await kafka_clients.refresh_metadata(producer)
                    for each in running:
                        if self._runner.running.get(each.pipeline.name) is each:
                            await self._start_feed(each)
            except (KafkaError, OSError) as error:
                log.warning("topic check failed; retrying", error=repr(error))

    async def stop(self, name: str, clean: bool) -> None:
        await self._stop_feed(name)
        await self._runner.unload(name)
        if clean:
            topics = self._kafka.topics
            try:
                await kafka_clients.delete_topics(
                    self._admin, [topics.pipeline_inputs(name), topics.pipeline_outputs(name)]
                )
            except (KafkaError, OSError) as error:
                log.warning("could not delete a pipeline's topics", pipeline=name, error=repr(error))

    async def _stop_feed(self, name: str) -> None:
        task = self._feeds.pop(name, None)
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=FEED_STOP_WAIT_SECONDS)
        if done:
            _retrieve(task)
            return
        log.info("a stopped feed is still closing its consumer; it finishes in the background", pipeline=name)
        self._stopping.add(task)
        task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        self._stopping.discard(task)
        _retrieve(task)

    async def close(self) -> None:
        for name in list(self._feeds):
            await self._stop_feed(name)
        if self._stopping:
            await asyncio.wait(list(self._stopping))


def _retrieve(task: asyncio.Task[None]) -> None:
    """A feed ends cancelled; anything else it raised is logged, not lost."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("a pipeline feed failed while stopping", error=repr(error))
