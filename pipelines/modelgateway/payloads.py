"""What a model input message holds, and so how the model is called (seldon-reference-implementation.md §7.2).

The reference's rule, kept: the ``seldon-infer-type`` header says it when present; otherwise the
value is tried as a protobuf ``ModelInferRequest`` (gRPC), then as a ``ModelInferResponse`` turned
into a request (outputs become inputs: a step fed by another model's answer), and last as Open
Inference Protocol JSON (REST; a body with ``outputs`` but no ``inputs`` is renamed the same way).
Anything else is :class:`BadPayload`, whose message goes to the errors topic.

A value that parses as protobuf but carries no input tensor (the empty value does) is not taken
for a request: an inference with nothing to infer is malformed, not a model's problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from apis.kafka import InferType
from apis.v2_dataplane import v2_dataplane_pb2 as pb


class BadPayload(ValueError):
    """A message value that is no inference request; the text says why."""


@dataclass(frozen=True)
class GrpcCall:
    request: pb.ModelInferRequest


@dataclass(frozen=True)
class RestCall:
    body: bytes  # OIP JSON with "inputs"


Call = GrpcCall | RestCall


def decode(value: bytes | None, infer_type: str | None) -> Call:
    """The call a message asks for; raises :class:`BadPayload`."""
    if not value:
        raise BadPayload("the message has no value (expected an inference request)")
    if infer_type is not None:
        return _by_header(value, infer_type)
    for attempt in (_proto_request, _proto_response):
        call = attempt(value)
        if call is not None:
            return call
    try:
        return _json(value, response=False)
    except BadPayload as problem:
        raise BadPayload(
            "the value is neither a protobuf ModelInferRequest/ModelInferResponse nor Open Inference "
            f"Protocol JSON ({problem})"
        ) from None


def _by_header(value: bytes, infer_type: str) -> Call:
    try:
        kind = InferType(infer_type)
    except ValueError:
        known = ", ".join(InferType)
        raise BadPayload(f"seldon-infer-type {infer_type[:80]!r} is not one of {known}") from None
    if kind is InferType.JSON_REQUEST:
        return _json(value, response=False)
    if kind is InferType.JSON_RESPONSE:
        return _json(value, response=True)
    call = _proto_request(value) if kind is InferType.PROTO_REQUEST else _proto_response(value)
    if call is None:
        message = "ModelInferRequest" if kind is InferType.PROTO_REQUEST else "ModelInferResponse"
        raise BadPayload(f"the value is not a protobuf {message} with tensors")
    return call


def _proto_request(value: bytes) -> GrpcCall | None:
    try:
        request = pb.ModelInferRequest.FromString(value)
    except DecodeError:
        return None
    return GrpcCall(request) if request.inputs else None


def _proto_response(value: bytes) -> GrpcCall | None:
    try:
        response = pb.ModelInferResponse.FromString(value)
    except DecodeError:
        return None
    if not response.outputs:
        return None
    request = pb.ModelInferRequest(id=response.id, raw_input_contents=response.raw_output_contents)
    for key, parameter in response.parameters.items():
        request.parameters[key].CopyFrom(parameter)
    for output in response.outputs:
        tensor = request.inputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        tensor.contents.CopyFrom(output.contents)
        for key, parameter in output.parameters.items():
            tensor.parameters[key].CopyFrom(parameter)
    return GrpcCall(request)


def _json(value: bytes, *, response: bool) -> RestCall:
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadPayload("JSON value is not an object")
    if (response or "inputs" not in body) and isinstance(body.get("outputs"), list):
        body["inputs"] = body.pop("outputs")
        for key in ("model_name", "model_version"):
            body.pop(key, None)
        return RestCall(json.dumps(body).encode())
    if not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadPayload("JSON object has no 'inputs' list with tensors")
    return RestCall(value)
