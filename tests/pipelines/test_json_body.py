"""The gateway's JSON bodies: orjson's speed with the standard library's rules."""

from __future__ import annotations

import json

import pytest

from pipelines.json_body import dumps, loads


def test_a_body_round_trips_compactly() -> None:
    body = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]}]}
    assert loads(dumps(body)) == body
    assert b" " not in dumps(body)


def test_an_integer_over_64_bits_is_still_written() -> None:
    assert loads(dumps({"data": [2**70]})) == {"data": [2**70]}


def test_what_json_cannot_carry_raises_value_error() -> None:
    with pytest.raises(ValueError, match="not serialisable as JSON"):
        dumps({"data": [object()]})


@pytest.mark.parametrize("raw", [b"[NaN]", b"\xff", b'{"inputs": [1', b""])
def test_malformed_bodies_raise_json_decode_error(raw: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(raw)
