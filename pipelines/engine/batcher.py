"""The engine's batched steps: many runs' messages gathered into one model call (decision 0024).

One :class:`StepBatcher` per batched step of each loaded pipeline. A run hands it the step's joined
input (:class:`pipelines.executor.BatchSink`) and goes on without waiting; the batcher holds it in a
:class:`pipelines.batching.BatchBuffer` and, once the batch is full (or its ``windowMs`` ends),
calls the model through Envoy on a task of its own. The stacked request and the model's answer are
written to ``model.<step>.inputs|outputs`` keyed by the request that completed the batch (its
headers, ``pipeline`` included, go with them), so ``pipeline inspect <p>.<step>`` finds them.

A message that does not stack with the held ones, a failed model call and a batch dropped because
:data:`MAX_CALLS` batches are in flight already each write an error naming the step to the errors
topic (keyed by the request concerned, or the batch's last one). Held messages are memory only: an
unload (or a new version) drops a partial batch, as a crash would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog

from apis.names import REQUEST_ID_HEADER
from pipelines.batching import BatchBuffer, Batched, BatchMismatch
from pipelines.engine.audit import TopicWriter
from pipelines.engine.models import EnvoyModels, ModelCallFailed
from pipelines.parts import Batch
from pipelines.references import Direction, Source
from pipelines.tensors import Message

log = structlog.get_logger("meshserve.pipelines.engine")
MAX_CALLS = 4  # batches of one step being called at once; more are dropped (with an error)

Tag = tuple[str, Mapping[str, str]]  # a held message's request id and headers


class StepBatcher:
    """One batched step of one pipeline version (see the module docstring)."""

    def __init__(
        self, pipeline: str, step: str, batch: Batch, models: EnvoyModels, writer: TopicWriter
    ) -> None:
        self._pipeline = pipeline
        self._step = step
        self._models = models
        self._writer = writer
        self._buffer: BatchBuffer[Tag] = BatchBuffer(batch)
        self._calls: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @property
    def held(self) -> int:
        return len(self._buffer)

    def offer(self, step: str, tensors: Message, headers: Mapping[str, str]) -> None:
        """A run's message for the step (the run's :class:`pipelines.executor.BatchSink`)."""
        request_id = headers.get(REQUEST_ID_HEADER, "")
        if self._closed:  # a run of a version replaced (or unloaded) while it ran
            message = f"pipeline {self._pipeline}: step {step}: not batched, the pipeline version is gone"
            self._writer.error(self._pipeline, step, message, request_id, headers)
            return
        try:
            batched = self._buffer.add((request_id, headers), tensors, self._now())
        except BatchMismatch as problem:
            message = f"pipeline {self._pipeline}: step {step}: the message cannot join the batch: {problem}"
            self._writer.error(self._pipeline, step, message, request_id, headers)
            return
        if batched is not None:
            self._send(batched)
        elif self._buffer.deadline() is not None and self._timer is None:
            self._timer = asyncio.create_task(self._window(), name=f"batch-window-{self._step}")

    async def _window(self) -> None:
        """Send the partial batch when its window ends (re-armed while messages are held)."""
        try:
            while (deadline := self._buffer.deadline()) is not None:
                await asyncio.sleep(max(0.0, (deadline - self._now()) / 1000))
                batched = self._buffer.due(self._now())
                if batched is not None:
                    self._send(batched)
        finally:
            self._timer = None

    def _send(self, batched: Batched[Tag]) -> None:
        request_id, headers = batched.tags[-1]
        if len(self._calls) >= MAX_CALLS:
            message = (
                f"pipeline {self._pipeline}: step {self._step}: a batch of {len(batched.tags)} messages is "
                f"dropped: {MAX_CALLS} batches are being called already"
            )
            log.warning("batch dropped", pipeline=self._pipeline, step=self._step, held=len(batched.tags))
            self._writer.error(self._pipeline, self._step, message, request_id, headers)
            return
        task = asyncio.create_task(self._call(batched.message, request_id, headers))
        self._calls.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._calls.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("batch call crashed", pipeline=self._pipeline, step=self._step, error=repr(error))

    async def _call(self, tensors: Message, request_id: str, headers: Mapping[str, str]) -> None:
        observer = self._writer.observer(self._pipeline, request_id, headers)
        observer.record(Source(self._pipeline, self._step, Direction.INPUTS), tensors)
        try:
            output, _ = await self._models.call(self._step, tensors, headers)
        except ModelCallFailed as error:
            message = f"pipeline {self._pipeline}: step {self._step} failed on a batch: {error}"
            log.info("batch failed", pipeline=self._pipeline, step=self._step, error=str(error)[:300])
            self._writer.error(self._pipeline, self._step, message, request_id, headers)
            return
        observer.record(Source(self._pipeline, self._step, Direction.OUTPUTS), output)

    def _now(self) -> float:
        return self._loop.time() * 1000

    async def close(self) -> None:
        """Stop: a partial batch is dropped, calls in flight are cancelled, later offers refused."""
        self._closed = True
        tasks = [*self._calls, *([self._timer] if self._timer is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
