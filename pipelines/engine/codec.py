"""Tensors between the engine's JSON-shaped :data:`Message` and the V2 protobuf messages.

Kafka carries protobuf (``ModelInferRequest`` on ``*.inputs``, ``ModelInferResponse`` on
``*.outputs``; seldon-pipelines.md §5.2) and gRPC callers send it; the executor works on
:class:`pipelines.tensors.Tensor` (OIP JSON). Typed ``contents`` and ``raw_input_contents`` are both
read (raw bytes are little-endian, BYTES elements length-prefixed, as the V2 protocol says);
typed contents are written. Anything malformed raises :class:`InvalidTensor` naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from apis.v2_dataplane import v2_dataplane_pb2 as pb
from pipelines.tensors import InvalidTensor, Message, Tensor, flat_data

# datatype -> (typed contents field, numpy dtype of its raw little-endian form)
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "?"),
    "UINT8": ("uint_contents", "<u1"),
    "UINT16": ("uint_contents", "<u2"),
    "UINT32": ("uint_contents", "<u4"),
    "UINT64": ("uint64_contents", "<u8"),
    "INT8": ("int_contents", "<i1"),
    "INT16": ("int_contents", "<i2"),
    "INT32": ("int_contents", "<i4"),
    "INT64": ("int64_contents", "<i8"),
    "FP16": ("fp32_contents", "<f2"),  # no typed field for FP16: written as fp32
    "FP32": ("fp32_contents", "<f4"),
    "FP64": ("fp64_contents", "<f8"),
    "BYTES": ("bytes_contents", ""),
}


def request_to_message(request: pb.ModelInferRequest) -> Message:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidTensor(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; give one per input"
        )
    return tuple(_tensor(t, raw[i] if raw else None) for i, t in enumerate(request.inputs))


def response_to_message(response: pb.ModelInferResponse) -> Message:
    raw = list(response.raw_output_contents)
    if raw and len(raw) != len(response.outputs):
        raise InvalidTensor(f"raw_output_contents has {len(raw)} entries for {len(response.outputs)} outputs")
    return tuple(_tensor(t, raw[i] if raw else None) for i, t in enumerate(response.outputs))


def message_to_request(message: Iterable[Tensor], *, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(id=request_id)
    for tensor in message:
        _fill(request.inputs.add(), tensor)
    return request


def message_to_response(
    message: Iterable[Tensor], *, request_id: str = "", model: str = ""
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(id=request_id, model_name=model)
    for tensor in message:
        _fill(response.outputs.add(), tensor)
    return response


def _tensor(
    tensor: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor, raw: bytes | None
) -> Tensor:
    name = tensor.name or "?"
    if tensor.datatype not in _CONTENTS:
        raise InvalidTensor(f"tensor {name}: datatype {tensor.datatype!r} is unknown")
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise InvalidTensor(f"tensor {name}: shape {shape} has a negative dimension")
    field, dtype = _CONTENTS[tensor.datatype]
    data: list[Any]
    if raw is not None:
        data = _from_raw(name, tensor.datatype, dtype, raw)
    else:
        data = list(getattr(tensor.contents, field))
        if tensor.datatype == "BYTES":
            data = [_text(v) for v in data]
    parameters = {k: _parameter(v) for k, v in tensor.parameters.items()} or None
    checked: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape, "data": data}
    if parameters:
        checked["parameters"] = parameters
    return Tensor.from_json(checked)


def _from_raw(name: str, datatype: str, dtype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values: list[Any] = []
        position = 0
        while position < len(raw):
            if position + 4 > len(raw):
                raise InvalidTensor(f"tensor {name}: raw BYTES content is truncated")
            (length,) = struct.unpack_from("<I", raw, position)
            position += 4
            if position + length > len(raw):
                raise InvalidTensor(f"tensor {name}: raw BYTES element overruns the content")
            values.append(_text(raw[position : position + length]))
            position += length
        return values
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise InvalidTensor(f"tensor {name}: {len(raw)} raw bytes is not a whole number of {datatype}")
    return np.frombuffer(raw, dtype=dtype).tolist()  # type: ignore[no-any-return]


def _text(value: bytes) -> str | bytes:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value


def _fill(
    target: pb.ModelInferRequest.InferInputTensor | pb.ModelInferResponse.InferOutputTensor, tensor: Tensor
) -> None:
    target.name = tensor.name
    target.datatype = tensor.datatype
    target.shape.extend(tensor.shape)
    field, _ = _CONTENTS[tensor.datatype]
    data = tensor.data
    # A flat list (the usual case) goes as it is: walking it per element was most of the encoding.
    values = data if list not in map(type, data) else flat_data(data)
    if math.prod(tensor.shape) != len(values):
        raise InvalidTensor(
            f"tensor {tensor.name}: shape {list(tensor.shape)} does not hold {len(values)} values"
        )
    if tensor.datatype == "BYTES":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    try:
        getattr(target.contents, field).extend(values)
    except (TypeError, ValueError) as exc:
        raise InvalidTensor(f"tensor {tensor.name}: values do not fit {tensor.datatype}: {exc}") from exc
    for key, value in (tensor.parameters or {}).items():
        _set_parameter(target.parameters[key], value)


def _parameter(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _set_parameter(target: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)
