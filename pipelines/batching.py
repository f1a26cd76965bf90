"""A batched step (``batch: {size, windowMs}``, seldon-pipelines.md §4.6): many requests, one model call.

Transport-free like :mod:`pipelines.topology`; the engine's :mod:`pipelines.engine.batcher` drives it.
The reference leaves the semantics open (§12.2); meshserve's (docs/decisions/0024-step-batching.md):

- ``size`` counts **messages** (one per request reaching the step), not rows. A batch is the held
  messages stacked: every tensor along dim 0 (``[1,16]`` x 20 -> ``[20,16]``), tensors in the first
  message's order. Every message must have the same tensor names in the same order, the same
  datatypes and the same shape past dim 0 as the first one held; one that does not is refused
  (:class:`BatchMismatch`) and the others keep waiting.
- ``windowMs`` (optional) bounds the wait: a partial batch is sent once its first message has waited
  that long. Without it a partial batch waits for the size (or the pipeline's unload, which drops it).
  With a window and no size, the window alone decides, capped at :data:`MAX_BATCH_SIZE` messages.
- Batches tumble: a sent batch's messages are gone; the next batch starts empty. (``rolling`` cannot
  reach the engine: the scheduler API has no field for it and ``rolling: true`` is refused on load.)

At most ``size`` messages are held, so a buffer is bounded by the pipeline's validated batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipelines.parts import MAX_BATCH_SIZE, Batch
from pipelines.tensors import Message, Tensor, flat_data

T = TypeVar("T")


class BatchMismatch(ValueError):
    """A message cannot be stacked with the ones held; the text says which tensor and why."""


@dataclass(frozen=True, slots=True)
class Batched(Generic[T]):
    tags: tuple[T, ...]  # what came with each message (its request), in arrival order
    message: Message  # the stacked tensors


class BatchBuffer(Generic[T]):
    """The messages one batched step holds until its batch is full or its window ends."""

    def __init__(self, batch: Batch) -> None:
        self.window_ms = batch.window_ms or None
        if batch.size is not None:
            self.size = batch.size
        else:
            self.size = MAX_BATCH_SIZE if self.window_ms else 1
        self._tags: list[T] = []
        self._messages: list[Message] = []
        self._first_ms: float | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, tag: T, message: Message, now_ms: float) -> Batched[T] | None:
        """Hold ``message``; the batch when it is now full. Raises :class:`BatchMismatch`."""
        if self._messages:
            _check_stackable(self._messages[0], message)
        else:
            _check_stackable(message, message)
            self._first_ms = now_ms
        self._tags.append(tag)
        self._messages.append(message)
        return self._take() if len(self._messages) >= self.size else None

    def deadline(self) -> float | None:
        """When (ms) the held partial batch is due, if a window applies and anything is held."""
        if self.window_ms is None or self._first_ms is None:
            return None
        return self._first_ms + self.window_ms

    def due(self, now_ms: float) -> Batched[T] | None:
        """The partial batch, if its window has ended by ``now_ms``."""
        deadline = self.deadline()
        return self._take() if deadline is not None and deadline <= now_ms else None

    def _take(self) -> Batched[T]:
        batched = Batched(tuple(self._tags), stack_rows(self._messages))
        self._tags, self._messages, self._first_ms = [], [], None
        return batched


def stack_rows(messages: Sequence[Message]) -> Message:
    """The messages' tensors stacked along dim 0 (they must be stackable: see :class:`BatchBuffer`)."""
    first = messages[0]
    stacked: list[Tensor] = []
    for position, tensor in enumerate(first):
        parts = [message[position] for message in messages]
        rows = sum(part.shape[0] for part in parts)
        data = [value for part in parts for value in flat_data(part.data)]
        shape = (rows, *tensor.shape[1:])
        stacked.append(Tensor(tensor.name, tensor.datatype, shape, data, tensor.parameters))
    return tuple(stacked)


def _check_stackable(first: Message, message: Message) -> None:
    names = [t.name for t in message]
    expected = [t.name for t in first]
    if names != expected:
        raise BatchMismatch(f"its tensors {names} are not the batch's {expected}")
    for held, tensor in zip(first, message, strict=True):
        if not tensor.shape:
            raise BatchMismatch(f"tensor {tensor.name} is a scalar (shape []); it has no rows to stack")
        if (tensor.datatype, tensor.shape[1:]) != (held.datatype, held.shape[1:]):
            rows = ", ".join(["n", *map(str, held.shape[1:])])
            raise BatchMismatch(
                f"tensor {tensor.name} is {tensor.datatype} {list(tensor.shape)}; "
                f"the batch holds {held.datatype} [{rows}]"
            )
