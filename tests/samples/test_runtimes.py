"""The sample runtimes in process: edge values, bounds and every refusal (the real-MLServer answers
to the reference's inputs are in tests/e2e/test_sample_runtimes.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlserver import MLModel
from mlserver.errors import MLServerError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse

from samples.runtimes.arithmetic import Add10, AddSub, Conditional, Mul10
from samples.runtimes.cyclic import MAX_IDENTITY_TENSORS, Counter, Identity
from samples.runtimes.query import ChoiceQuery, Query
from samples.runtimes.tensors import MAX_ELEMENTS, InvalidTensor

INT32 = np.iinfo(np.int32)


async def loaded(runtime: type[MLModel], name: str = "m", **extra: Any) -> MLModel:
    settings = ModelSettings(
        name=name, implementation=runtime, parameters=ModelParameters(version="1", extra=extra)
    )
    model = runtime(settings)
    assert await model.load()
    return model


def request(*tensors: tuple[str, str, list[int], Any]) -> InferenceRequest:
    return InferenceRequest(
        inputs=[{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in tensors]
    )


def outputs(response: InferenceResponse) -> list[tuple[str, str, list[int], Any]]:
    return [(o.name, o.datatype, list(o.shape), o.data.root) for o in response.outputs]


def pair(a: list[Any], b: list[Any], shape: list[int] | None = None) -> InferenceRequest:
    shape = shape or [1, 16]
    return request(("INPUT0", "INT32", shape, a), ("INPUT1", "INT32", shape, b))


async def refused(model: MLModel, payload: InferenceRequest, words: str) -> str:
    with pytest.raises(InvalidTensor) as caught:
        await model.predict(payload)
    assert caught.value.status_code == 400
    message = str(caught.value)
    assert words in message and "model m" in message, message
    return message


async def test_tfsimple_wraps_on_int32_overflow_as_triton_does() -> None:
    model = await loaded(AddSub)
    answer = outputs(await model.predict(pair([INT32.max] * 16, [1] * 16)))
    assert answer[0][3] == [INT32.min] * 16 and answer[1][3] == [INT32.max - 1] * 16


async def test_tfsimple_takes_a_batch_of_nested_rows() -> None:
    model = await loaded(AddSub)
    rows = [list(range(16)), list(range(16, 32))]
    answer = outputs(await model.predict(pair(rows, rows, [2, 16])))
    assert answer[0] == ("OUTPUT0", "INT32", [2, 16], [2 * x for x in range(32)])


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (
            request(("INPUT0", "INT32", [1, 16], [1] * 16), ("INPUT0", "INT32", [1, 16], [1] * 16)),
            "more than once",
        ),
        (pair([[1] * 8, [1] * 9], [1] * 16), "rectangular"),
        (pair([True] * 16, [1] * 16), "must be numbers"),
        (pair([-(2**31) - 1] + [1] * 15, [1] * 16), "outside the range"),
        (pair([2**64] * 16, [1] * 16), "must be numbers"),
        (pair([], [], [0, 16]), "[1..8,16]"),
        (pair([1] * 16, [1] * 16, [-1, 16]), "[1..8,16]"),
    ],
)
async def test_tfsimple_refusals(payload: InferenceRequest, words: str) -> None:
    await refused(await loaded(AddSub), payload, words)


async def test_add10_and_mul10_refuse_non_finite_and_fp32_overflow() -> None:
    add10, mul10 = await loaded(Add10), await loaded(Mul10)
    await refused(add10, request(("INPUT", "FP32", [4], [1e39, 0, 0, 0])), "beyond the range of FP32")
    huge = float(np.finfo(np.float32).max)
    answer = outputs(await mul10.predict(request(("INPUT", "FP32", [4], [huge, -huge, 0.5, 0]))))
    assert answer == [("OUTPUT", "FP32", [4], [float("inf"), float("-inf"), 5.0, 0.0])]
    assert outputs(await add10.predict(request(("INPUT", "FP32", [4], [0.5, -10, 1, 2]))))[0][3] == [
        10.5, 0.0, 11.0, 12.0
    ]  # fmt: skip


async def test_conditional_reads_tensors_in_any_order() -> None:
    model = await loaded(Conditional)
    payload = request(
        ("INPUT1", "FP32", [4], [5, 6, 7, 8]),
        ("CHOICE", "INT32", [1], [0]),
        ("INPUT0", "FP32", [4], [1, 2, 3, 4]),
    )
    assert outputs(await model.predict(payload)) == [("OUTPUT0", "FP32", [4], [1.0, 2.0, 3.0, 4.0])]


@given(st.lists(st.integers(INT32.min, INT32.max), min_size=16, max_size=16))
async def test_tfsimple_matches_numpy_int32_arithmetic(values: list[int]) -> None:
    model = await loaded(AddSub)
    a = np.array(values, dtype=np.int32)
    b = a[::-1].copy()
    answer = outputs(await model.predict(pair(values, b.tolist())))
    with np.errstate(over="ignore"):
        assert answer[0][3] == (a + b).tolist() and answer[1][3] == (a - b).tolist()


async def test_tensors_and_requests_above_their_limits_are_refused() -> None:
    query = await loaded(ChoiceQuery, query="choice == 1")
    rows = MAX_ELEMENTS + 1
    await refused(query, request(("choice", "INT32", [rows], [1] * rows)), "above the limit of 4096")
    identity = await loaded(Identity)
    too_many = [(f"t{n}", "INT32", [1], [n]) for n in range(MAX_IDENTITY_TENSORS + 1)]
    await refused(identity, request(*too_many), "above the limit of 64")


async def test_counter_counts_int64_and_refuses_the_largest_value() -> None:
    counter = await loaded(Counter)
    answer = outputs(await counter.predict(request(("x", "INT64", [1, 1], [2**40]))))
    assert answer[0] == ("output", "INT64", [1, 1], [2**40 + 1]) and answer[1][0] == "stop"
    await refused(counter, request(("x", "INT32", [1], [INT32.max])), "largest INT32")
    await refused(counter, request(("x", "INT32", [1], [1.5])), "whole numbers")
    await refused(counter, request(("x", "INT32", [2], [1, 2])), "must hold one")


async def test_identity_waits_its_delay_and_echoes() -> None:
    model = await loaded(Identity, delay="0.001")
    payload = request(("output", "INT32", [1, 1], [3]), ("stop", "BYTES", [1, 1], [""]))
    assert outputs(await model.predict(payload)) == outputs(
        InferenceResponse(model_name="m", outputs=[i.model_dump() for i in payload.inputs])
    )


@pytest.mark.parametrize("delay", ["-1", "11", "nan", "inf", "soon", [1]])
async def test_identity_refuses_a_bad_delay_at_load(delay: object) -> None:
    with pytest.raises(MLServerError, match="parameter delay must"):
        await loaded(Identity, delay=delay)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("choice == 1", Query("choice", 1)),
        ("  x.y-z==-7 ", Query("x.y-z", -7)),
        ("c == 0012", Query("c", 12)),
    ],
)
def test_query_forms(text: str, parsed: Query) -> None:
    assert Query.parse("m", text) == parsed


@pytest.mark.parametrize(
    "text",
    [None, 3, "", "choice = 1", "choice == 1.5", "choice > 1", "a == 1 or b == 2", "choice == 1" + "0" * 18],
)
def test_query_refuses_everything_else(text: object) -> None:
    with pytest.raises(MLServerError, match="'<tensor> == <integer>'"):
        Query.parse("m", text)


async def test_query_keeps_the_matching_rows() -> None:
    model = await loaded(ChoiceQuery, query="choice == 2")
    answer = outputs(await model.predict(request(("choice", "INT64", [4, 1], [2, 1, 2, 3]))))
    assert answer == [
        ("choice", "INT64", [2], [2, 2]),
        ("status", "BYTES", [1, 1], [b"row satisfied choice == 2"]),
    ]
    await refused(model, request(("choice", "INT32", [2, 2], [1, 2, 3, 4])), "[rows, 1]")
    await refused(model, request(("choice", "FP32", [1], [2])), "INT32 or INT64")
