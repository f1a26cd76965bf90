"""What the sample models compute and refuse, in process: edge values, bounds and every refusal.

MLServer itself cannot be imported here (its ``inference`` protos clash with the project's own in
one process), so these test the transport-free logic the runtimes call; the runtimes answering the
reference's inputs in a real MLServer are tests/e2e/test_sample_runtimes.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from samples.runtimes import examples
from samples.runtimes.examples import MAX_IDENTITY_TENSORS, InvalidParameter, Query
from samples.runtimes.tensors import MAX_ELEMENTS, InvalidTensor, Output, TensorLike

INT32 = np.iinfo(np.int32)
I = list(range(1, 17))  # noqa: E741 - the reference's name


@dataclass(frozen=True)
class T:
    name: str
    datatype: str
    shape: list[int]
    data: Any


def pair(a: list[Any], b: list[Any], shape: list[int] | None = None) -> list[TensorLike]:
    shape = shape or [1, 16]
    return [T("INPUT0", "INT32", shape, a), T("INPUT1", "INT32", shape, b)]


def plain(outputs: list[Output]) -> list[tuple[str, str, list[int], list[Any]]]:
    return [
        (name, datatype, list(array.shape), array.flatten().tolist()) for name, datatype, array in outputs
    ]


def refused(words: str, call: Any, *args: Any) -> str:
    with pytest.raises(InvalidTensor) as caught:
        call("m", *args)
    message = str(caught.value)
    assert words in message and message.startswith("model m"), message
    return message


def test_the_reference_answers() -> None:
    assert plain(examples.add_sub("m", pair(I, I))) == [
        ("OUTPUT0", "INT32", [1, 16], [2 * x for x in I]),
        ("OUTPUT1", "INT32", [1, 16], [0] * 16),
    ]
    four = [T("INPUT", "FP32", [4], [1, 2, 3, 4])]
    assert plain(examples.add10("m", four)) == [("OUTPUT", "FP32", [4], [11, 12, 13, 14])]
    assert plain(examples.mul10("m", four)) == [("OUTPUT", "FP32", [4], [10, 20, 30, 40])]
    counted, flag = examples.count("m", [T("counter-pipeline.inputs", "INT32", [1], [9])])
    assert (counted.tolist(), str(counted.dtype), flag) == ([10], "int32", "stop")


def test_requested_outputs_keep_only_those_named_as_triton_does() -> None:
    outputs = examples.add_sub("m", pair(I, I))
    assert examples.requested("m", outputs, []) == outputs
    assert [name for name, _, _ in examples.requested("m", outputs, ["OUTPUT1"])] == ["OUTPUT1"]
    both = examples.requested("m", outputs, ["OUTPUT1", "OUTPUT0"])
    assert [name for name, _, _ in both] == ["OUTPUT0", "OUTPUT1"]  # the model's order
    refused("no output named OUTPUT9; it has OUTPUT0, OUTPUT1", examples.requested, outputs, ["OUTPUT9"])


def test_tfsimple_wraps_on_int32_overflow_as_triton_does() -> None:
    answer = plain(examples.add_sub("m", pair([INT32.max] * 16, [1] * 16)))
    assert answer[0][3] == [INT32.min] * 16 and answer[1][3] == [INT32.max - 1] * 16


def test_tfsimple_takes_a_batch_of_nested_rows() -> None:
    rows = [list(range(16)), list(range(16, 32))]
    answer = plain(examples.add_sub("m", pair(rows, rows, [2, 16])))
    assert answer[0] == ("OUTPUT0", "INT32", [2, 16], [2 * x for x in range(32)])


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (pair(I, I)[:1], "'INPUT1' is missing"),
        ([*pair(I, I), T("EXTRA", "INT32", [1], [1])], "unexpected input 'EXTRA'"),
        ([*pair(I, I), T("INPUT0", "INT32", [1, 16], I)], "more than once"),
        ([T("INPUT0", "FP32", [1, 16], I), pair(I, I)[1]], "must be INT32 [1..8,16]"),
        (pair(I * 9, I * 9, [9, 16]), "[1..8,16]"),
        (pair([], [], [0, 16]), "[1..8,16]"),
        (pair(I, I, [-1, 16]), "[1..8,16]"),
        (pair(I * 2, I, [2, 16])[:1] + pair(I, I)[1:], "must have one shape"),
        (pair(I[:15], I), "holds 15 values"),
        (pair([[1] * 8, [1] * 9], I), "rectangular"),
        (pair([1.5] * 16, I), "whole numbers"),
        (pair([True] * 16, I), "must be numbers"),
        (pair(["1"] * 16, I), "must be numbers"),
        (pair([INT32.min - 1, *I[1:]], I), "outside the range of INT32"),
        (pair([2**64] * 16, I), "must be numbers"),
        (pair([float("nan")] * 16, I), "finite"),
    ],
)
def test_tfsimple_refusals(inputs: list[TensorLike], words: str) -> None:
    refused(words, examples.add_sub, inputs)


def test_add10_and_mul10_bounds() -> None:
    refused("beyond the range of FP32", examples.add10, [T("INPUT", "FP32", [4], [1e39, 0, 0, 0])])
    refused("must be FP32 [4]", examples.mul10, [T("INPUT", "FP32", [5], [1, 2, 3, 4, 5])])
    refused("must be FP32 [4]", examples.mul10, [T("INPUT", "INT32", [4], [1, 2, 3, 4])])
    huge = float(np.finfo(np.float32).max)
    answer = plain(examples.mul10("m", [T("INPUT", "FP32", [4], [huge, -huge, 0.5, 0])]))
    assert answer == [("OUTPUT", "FP32", [4], [float("inf"), float("-inf"), 5.0, 0.0])]
    refused("must be FP32 [4], got FP64 [4]", examples.add10, [T("INPUT", "FP64", [4], [0.5, -10, 1, 2])])


@pytest.mark.parametrize(
    ("choice", "expected"), [(0, ("OUTPUT0", [1, 2, 3, 4])), (1, ("OUTPUT1", [5, 6, 7, 8]))]
)
def test_conditional_emits_one_tensor_reading_inputs_in_any_order(
    choice: int, expected: tuple[str, list[int]]
) -> None:
    inputs = [
        T("INPUT1", "FP32", [4], [5, 6, 7, 8]),
        T("CHOICE", "INT32", [1], [choice]),
        T("INPUT0", "FP32", [4], [1, 2, 3, 4]),
    ]
    assert plain(examples.conditional("m", inputs)) == [(expected[0], "FP32", [4], expected[1])]
    refused(
        "'CHOICE' must be INT32 [1]", examples.conditional, [T("CHOICE", "INT32", [2], [0, 1]), *inputs[::2]]
    )


@given(st.lists(st.integers(INT32.min, INT32.max), min_size=16, max_size=16))
def test_tfsimple_matches_numpy_int32_arithmetic(values: list[int]) -> None:
    a = np.array(values, dtype=np.int32)
    b = a[::-1].copy()
    answer = plain(examples.add_sub("m", pair(values, b.tolist())))
    with np.errstate(over="ignore"):
        assert answer[0][3] == (a + b).tolist() and answer[1][3] == (a - b).tolist()


@given(st.lists(st.integers(-(2**70), 2**70) | st.floats(allow_nan=True), min_size=4, max_size=4))
def test_anything_decoded_is_exactly_what_was_sent_or_refused(values: list[Any]) -> None:
    try:
        [(_, _, array)] = examples.add10("m", [T("INPUT", "FP32", [4], values)])
    except InvalidTensor:
        return
    assert all(np.isfinite(values)) and np.allclose(
        array - 10, np.array(values, dtype=np.float32), rtol=1e-6, atol=1e-3
    )


def test_drift_says_whether_a_batchs_mean_left_the_reference_data() -> None:
    assert plain(examples.drift("m", pair(I * 3, I * 3, [3, 16]))) == [("is_drift", "INT64", [1, 1], [0])]
    shifted = [x + 2 for x in I]
    within = examples.drift("m", pair(I + shifted, I * 2, [2, 16]))  # mean 9.5: not more than 1 away
    assert plain(within) == [("is_drift", "INT64", [1, 1], [0])]
    assert plain(examples.drift("m", pair(shifted, I))) == [("is_drift", "INT64", [1, 1], [1])]
    rows = examples.DRIFT_MAX_ROWS + 1
    too_many = pair(I * rows, I * rows, [rows, 16])
    refused(f"must be INT32 [1..{examples.DRIFT_MAX_ROWS},16]", examples.drift, too_many)
    refused("input 'INPUT1' is missing", examples.drift, pair(I, I)[:1])


def test_counter() -> None:
    counted, flag = examples.count("m", [T("output", "INT64", [1, 1], [2**40])])
    assert (counted.tolist(), str(counted.dtype), flag) == ([2**40 + 1], "int64", "stop")
    assert examples.count("m", [T("x", "INT32", [1], [-5])])[1] == "continue"
    refused("largest INT32", examples.count, [T("x", "INT32", [1], [INT32.max])])
    refused("whole numbers", examples.count, [T("x", "INT32", [1], [1.5])])
    refused("must hold one INT32 or INT64", examples.count, [T("x", "INT32", [2], [1, 2])])
    refused("must hold one INT32 or INT64", examples.count, [T("x", "FP32", [1], [1])])
    refused("exactly one input", examples.count, [T("a", "INT32", [1], [1]), T("b", "INT32", [1], [1])])
    refused("exactly one input", examples.count, [])


def test_limits() -> None:
    rows = MAX_ELEMENTS + 1
    query = Query("choice", 1)
    refused("above the limit of 4096", query.matching, [T("choice", "INT32", [rows], [1] * rows)])
    too_many = [T(f"t{n}", "INT32", [1], [n]) for n in range(MAX_IDENTITY_TENSORS + 1)]
    refused("above the limit of 64", examples.check_echo, too_many)
    examples.check_echo("m", too_many[:-1])


@pytest.mark.parametrize(("raw", "seconds"), [(0, 0.0), ("0.001", 0.001), ("10", 10.0)])
def test_delay(raw: object, seconds: float) -> None:
    assert examples.delay_seconds("m", raw) == seconds


@pytest.mark.parametrize("raw", ["-1", "11", "nan", "inf", "soon", [1], None])
def test_a_bad_delay_is_refused(raw: object) -> None:
    with pytest.raises(InvalidParameter, match="parameter delay must"):
        examples.delay_seconds("m", raw)


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
    [
        None,
        3,
        "",
        "choice = 1",
        "choice == 1.5",
        "choice > 1",
        "a == 1 or b == 2",
        "__import__('os')",
        "c == " + "9" * 19,
    ],
)
def test_query_refuses_everything_else(text: object) -> None:
    with pytest.raises(InvalidParameter, match="'<tensor> == <integer>'"):
        Query.parse("m", text)


def test_query_keeps_the_matching_rows_and_ignores_other_tensors() -> None:
    query = Query("choice", 2)
    other = T("INPUT", "FP32", [4], [5, 6, 7, 8])
    kept = query.matching("m", [other, T("choice", "INT64", [4, 1], [2, 1, 2, 3])])
    assert kept is not None and plain([kept]) == [("choice", "INT64", [2], [2, 2])]
    assert query.matching("m", [T("choice", "INT32", [1], [1]), other]) is None
    refused("[rows, 1]", query.matching, [T("choice", "INT32", [2, 2], [1, 2, 3, 4])])
    refused("INT32 or INT64", query.matching, [T("choice", "FP32", [1], [2])])
    refused("needs exactly one input 'choice'", query.matching, [other])


def test_occlusion_moves_only_where_an_element_matters() -> None:
    x = np.asarray([1.0, 2.0, 0.0], dtype=np.float32)
    variants = examples.occluded(x)
    assert [v.tolist() for v in variants] == [[0, 2, 0], [1, 0, 0], [1, 2, 0]]
    assert x.tolist() == [1, 2, 0]  # the input itself is left alone
    answers = [10 * v for v in variants]  # a model multiplying by 10
    assert examples.importances(10 * x, answers, x.shape).tolist() == [10.0, 20.0, 0.0]
