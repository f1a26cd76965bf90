"""Inference payloads: JSON (proto-style or OIP REST-style) to a gRPC ``ModelInferRequest``.

REST-style tensors carry ``data`` (possibly nested lists); gRPC carries a typed ``contents`` field
chosen by datatype. Converting lets one payload work with ``--inference-mode rest`` and ``grpc``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from google.protobuf import json_format

from apis.v2_dataplane import v2_dataplane_pb2
from cli.errors import CliError

# Same mapping MLServer and Triton use for InferTensorContents.
CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"payload is not valid JSON: {exc}") from exc


def infer_request(text: str, model_name: str) -> v2_dataplane_pb2.ModelInferRequest:
    """Build the gRPC request; an empty ``model_name`` becomes the model being called."""
    data = parse_json(text)
    if not isinstance(data, dict):
        raise CliError("payload must be a JSON object")
    if _is_rest_style(data):
        request = _from_rest(data)
    else:
        request = v2_dataplane_pb2.ModelInferRequest()
        try:
            json_format.ParseDict(data, request)
        except json_format.ParseError as exc:
            raise CliError(f"payload is not a ModelInferRequest: {exc}") from exc
    if not request.model_name:
        request.model_name = model_name
    return request


def _is_rest_style(data: Mapping[str, Any]) -> bool:
    inputs = data.get("inputs")
    return isinstance(inputs, list) and any(isinstance(item, dict) and "data" in item for item in inputs)


def _from_rest(data: Mapping[str, Any]) -> v2_dataplane_pb2.ModelInferRequest:
    request = v2_dataplane_pb2.ModelInferRequest(id=str(data.get("id", "")))
    _fill_parameters(request.parameters, data.get("parameters"), "parameters")
    for position, item in enumerate(data["inputs"]):
        _fill_input(request.inputs.add(), item, f"inputs[{position}]")
    for position, item in enumerate(data.get("outputs") or []):
        where = f"outputs[{position}]"
        output = request.outputs.add(name=str(_required(item, "name", where)))
        _fill_parameters(output.parameters, item.get("parameters"), where + ".parameters")
    return request


def _fill_input(tensor: v2_dataplane_pb2.ModelInferRequest.InferInputTensor, item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise CliError(f"{where} must be an object")
    datatype = str(_required(item, "datatype", where)).upper()
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CliError(f"{where}.datatype {datatype!r} is not one of {', '.join(CONTENTS_FIELD)}")
    tensor.name = str(_required(item, "name", where))
    tensor.datatype = datatype
    shape = _required(item, "shape", where)
    values = list(_flatten(item["data"]))
    if datatype == "BYTES":
        values = [value.encode() if isinstance(value, str) else value for value in values]
    try:
        tensor.shape.extend(shape if isinstance(shape, list) else [shape])
        getattr(tensor.contents, field).extend(values)
    except (TypeError, ValueError) as exc:
        raise CliError(f"{where}: {exc}") from exc
    _fill_parameters(tensor.parameters, item.get("parameters"), where + ".parameters")


def _fill_parameters(target: Any, parameters: Any, where: str) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise CliError(f"{where} must be an object")
    for key, value in parameters.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise CliError(f"{where}.{key} must be a string, number or boolean")


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _required(item: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in item:
        raise CliError(f"{where}.{key} is missing")
    return item[key]
