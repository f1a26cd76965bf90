"""A batched step's buffer (pipelines.batching): size, window, stacking along dim 0, refusals."""

from __future__ import annotations

import pytest

from pipelines.batching import BatchBuffer, BatchMismatch, stack_rows
from pipelines.parts import MAX_BATCH_SIZE, Batch
from pipelines.tensors import Message, Tensor


def row(value: int, *, name: str = "x", datatype: str = "INT32", width: int = 2) -> Message:
    return (Tensor(name, datatype, (1, width), [[value] * width]),)


def test_a_full_batch_is_the_messages_stacked_in_arrival_order() -> None:
    buffer: BatchBuffer[str] = BatchBuffer(Batch(size=3))
    assert buffer.add("r1", row(1), 0) is None and buffer.add("r2", row(2), 1) is None
    batched = buffer.add("r3", row(3), 2)
    assert batched is not None and batched.tags == ("r1", "r2", "r3")
    [x] = batched.message
    assert (x.name, x.datatype, x.shape, x.data) == ("x", "INT32", (3, 2), [1, 1, 2, 2, 3, 3])
    assert len(buffer) == 0 and buffer.deadline() is None  # tumbling: the next batch starts empty
    assert buffer.add("r4", row(4), 3) is None and len(buffer) == 1


def test_rows_add_up_and_every_tensor_is_stacked_in_the_first_messages_order() -> None:
    first = (Tensor("a", "FP32", (2, 2), [1.0, 2.0, 3.0, 4.0]), Tensor("b", "BYTES", (1,), ["p"]))
    second = (Tensor("a", "FP32", (1, 2), [[5.0, 6.0]]), Tensor("b", "BYTES", (2,), ["q", "r"]))
    a, b = stack_rows([first, second])
    assert (a.shape, a.data) == ((3, 2), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert (b.shape, b.data) == ((3,), ["p", "q", "r"])


def test_a_partial_batch_is_due_when_its_window_ends() -> None:
    buffer: BatchBuffer[str] = BatchBuffer(Batch(size=20, window_ms=100))
    buffer.add("r1", row(1), 1_000)
    buffer.add("r2", row(2), 1_050)
    assert buffer.deadline() == 1_100  # from the first message held
    assert buffer.due(1_099) is None
    batched = buffer.due(1_100)
    assert batched is not None and batched.tags == ("r1", "r2") and batched.message[0].shape == (2, 2)
    assert buffer.deadline() is None and buffer.due(10_000) is None


def test_without_a_window_a_partial_batch_waits_for_its_size() -> None:
    buffer: BatchBuffer[str] = BatchBuffer(Batch(size=2))
    buffer.add("r1", row(1), 0)
    assert buffer.deadline() is None and buffer.due(10**9) is None and len(buffer) == 1


@pytest.mark.parametrize(
    ("batch", "size"), [(Batch(window_ms=50), MAX_BATCH_SIZE), (Batch(), 1), (Batch(size=5, window_ms=0), 5)]
)
def test_the_size_without_one_given(batch: Batch, size: int) -> None:
    assert BatchBuffer(batch).size == size


def test_a_window_alone_still_sends_at_the_size_limit() -> None:
    buffer: BatchBuffer[int] = BatchBuffer(Batch(window_ms=10))
    for n in range(MAX_BATCH_SIZE - 1):
        assert buffer.add(n, row(n), 0) is None
    batched = buffer.add(-1, row(0), 0)
    assert batched is not None and batched.message[0].shape == (MAX_BATCH_SIZE, 2)


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (row(1, name="y"), "its tensors ['y'] are not the batch's ['x']"),
        (row(1, datatype="FP32"), "tensor x is FP32 [1, 2]; the batch holds INT32 [n, 2]"),
        (row(1, width=3), "tensor x is INT32 [1, 3]; the batch holds INT32 [n, 2]"),
        ((*row(1), *row(1, name="z")), "its tensors ['x', 'z'] are not the batch's ['x']"),
    ],
)
def test_a_message_that_does_not_stack_is_refused_and_the_batch_keeps_waiting(
    message: Message, words: str
) -> None:
    buffer: BatchBuffer[str] = BatchBuffer(Batch(size=2))
    buffer.add("r1", row(1), 0)
    with pytest.raises(BatchMismatch) as raised:
        buffer.add("bad", message, 1)
    assert str(raised.value) == words
    batched = buffer.add("r2", row(2), 2)
    assert batched is not None and batched.tags == ("r1", "r2")


def test_a_scalar_cannot_be_batched_even_first() -> None:
    buffer: BatchBuffer[str] = BatchBuffer(Batch(size=2))
    with pytest.raises(BatchMismatch, match=r"tensor s is a scalar \(shape \[\]\)"):
        buffer.add("r1", (Tensor("s", "INT32", (), [1]),), 0)
    assert len(buffer) == 0 and buffer.deadline() is None
