"""In-process models for the engine's tests: each implements the ModelCaller protocol.

They reproduce the reference's examples without Triton (seldon-pipelines.md §13): tfsimple
(OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32), add10 / mul10 (FP32 INPUT ->
OUTPUT), conditional (CHOICE 0 -> OUTPUT0 = INPUT0, else OUTPUT1 = INPUT1), counter (adds 1, says
continue below 10 and stop from 10), identity, and models that fail, stall or answer nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pipelines.references import Source
from pipelines.tensors import Message, Tensor, find

if TYPE_CHECKING:
    from pipelines.executor import ModelCaller, Observer

Model = Callable[[Message], Awaitable[Message | None]]


def tensor(name: str, data: list[int] | list[float] | list[str], datatype: str = "FP32") -> Tensor:
    shape = (1, len(data)) if datatype == "INT32" and len(data) == 16 else (len(data),)
    return Tensor(name, datatype, shape, list(data))


def _get(tensors: Message, name: str) -> Tensor:
    found = find(tensors, name)
    if found is None:
        raise ValueError(f"input {name} is missing (got {[t.name for t in tensors]})")
    return found


async def tfsimple(tensors: Message) -> Message:
    a, b = _get(tensors, "INPUT0"), _get(tensors, "INPUT1")
    return (
        Tensor("OUTPUT0", "INT32", a.shape, [x + y for x, y in zip(a.data, b.data, strict=True)]),
        Tensor("OUTPUT1", "INT32", a.shape, [x - y for x, y in zip(a.data, b.data, strict=True)]),
    )


async def add10(tensors: Message) -> Message:
    x = _get(tensors, "INPUT")
    return (Tensor("OUTPUT", "FP32", x.shape, [v + 10 for v in x.data]),)


async def mul10(tensors: Message) -> Message:
    x = _get(tensors, "INPUT")
    return (Tensor("OUTPUT", "FP32", x.shape, [v * 10 for v in x.data]),)


async def conditional(tensors: Message) -> Message:
    if _get(tensors, "CHOICE").data[0] == 0:
        return (_get(tensors, "INPUT0").renamed("OUTPUT0"),)
    return (_get(tensors, "INPUT1").renamed("OUTPUT1"),)


async def counter(tensors: Message) -> Message:
    value = tensors[0].data[0] + 1
    flag = "continue" if value < 10 else "stop"
    return (Tensor("output", "INT32", (1, 1), [value]), Tensor(flag, "BYTES", (1, 1), [""]))


async def identity(tensors: Message) -> Message:
    return tensors


async def nothing(tensors: Message) -> None:
    return None


async def broken(tensors: Message) -> Message:
    raise RuntimeError("model server said 500: boom")


def slow(model: Model, seconds: float) -> Model:
    async def delayed(tensors: Message) -> Message | None:
        await asyncio.sleep(seconds)
        return await model(tensors)

    return delayed


@dataclass
class Models:
    """A ModelCaller over named fake models, logging every call (model, tensors, headers)."""

    models: Mapping[str, Model]
    calls: list[tuple[str, Message, dict[str, str]]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def __call__(self, model: str, tensors: Message, headers: Mapping[str, str]) -> Message | None:
        self.calls.append((model, tensors, dict(headers)))
        try:
            return await self.models[model](tensors)
        except asyncio.CancelledError:
            self.cancelled.append(model)
            raise

    def called(self, model: str) -> list[Message]:
        return [tensors for name, tensors, _ in self.calls if name == model]


@dataclass
class Recorder:
    """An Observer keeping every message, as the Kafka path would write them to topics."""

    messages: list[tuple[Source, Message]] = field(default_factory=list)

    def record(self, source: Source, message: Message) -> None:
        self.messages.append((source, message))

    def sources(self) -> list[str]:
        return [str(source) for source, _ in self.messages]


if TYPE_CHECKING:  # conformance, checked by mypy
    _caller: ModelCaller = Models({})
    _observer: Observer = Recorder()
