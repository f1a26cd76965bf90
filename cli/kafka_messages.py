"""What ``pipeline inspect`` shows of one Kafka message: its value decoded, optionally one tensor,
optionally truncated, as a raw line or a JSON object (seldon-pipelines.md §7).

Values are decoded by the ``seldon-infer-type`` header when present (apis.kafka.InferType); else
as Open Inference Protocol JSON when they parse as a JSON object, else as a protobuf
``ModelInferRequest`` (on ``*.inputs``) or ``ModelInferResponse`` (on ``*.outputs``) shown as
protojson, the reference's rendering. A value that is none of these is shown as text (the errors
topic holds plain reasons) or base64.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from apis.kafka import INFER_TYPE_HEADER, InferType
from apis.v2_dataplane import v2_dataplane_pb2 as pb
from cli.output import dumps
from cli.topic_reader import Message as KafkaMessage

TRUNCATE_ITEMS = 10  # values kept of each tensor's data with --truncate
TRUNCATE_CHARS = 64  # characters kept of a long string (base64 raw contents, bytes)
_TENSOR_LISTS = ("inputs", "outputs")


def decode(message: KafkaMessage) -> Any:
    """The value as JSON-ready data (a dict for inference messages)."""
    value = message.value or b""
    if not value:
        return {}
    infer_type = _header(message, INFER_TYPE_HEADER)
    if infer_type not in tuple(InferType):
        infer_type = None  # absent or unknown: guess, as the model gateway does
    outputs = message.topic.endswith(".outputs")
    if infer_type in (InferType.JSON_REQUEST, InferType.JSON_RESPONSE) or infer_type is None:
        data = _json_object(value)
        if data is not None:
            return data
    if infer_type == InferType.PROTO_REQUEST or (infer_type is None and not outputs):
        decoded = _proto(value, pb.ModelInferRequest())
    else:
        decoded = _proto(value, pb.ModelInferResponse())
    if decoded:  # bytes that parse as protobuf yet hold no known field are no inference message
        return decoded
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


def tensor(value: Any, name: str) -> Any | None:
    """The tensor ``name`` of a decoded request or response; None if it has none of that name."""
    if not isinstance(value, dict):
        return None
    for kind in _TENSOR_LISTS:
        for item in value.get(kind) or ():
            if isinstance(item, dict) and item.get("name") == name:
                return item
    return None


def truncated(value: Any, *, parent: str = "") -> Any:
    """Long lists cut to their first values and a ``"... N more"`` marker (tensor lists are kept
    whole: only their data is cut); long strings cut likewise."""
    if isinstance(value, dict):
        return {k: truncated(v, parent=k) for k, v in value.items()}
    if isinstance(value, list):
        items = [truncated(item) for item in value]
        if parent in _TENSOR_LISTS or parent == "shape" or len(items) <= TRUNCATE_ITEMS:
            return items
        return [*items[:TRUNCATE_ITEMS], f"... {len(items) - TRUNCATE_ITEMS} more"]
    if isinstance(value, str) and len(value) > TRUNCATE_CHARS:
        return f"{value[:TRUNCATE_CHARS]}... {len(value) - TRUNCATE_CHARS} more"
    return value


def shown_key(message: KafkaMessage) -> str:
    return (message.key or b"").decode(errors="replace")


def headers_map(message: KafkaMessage) -> dict[str, list[str]]:
    """Headers as the reference shows them: each name with its list of values."""
    shown: dict[str, list[str]] = {}
    for name, value in message.headers:
        shown.setdefault(name, []).append(value.decode(errors="replace"))
    return shown


def headers_text(message: KafkaMessage) -> str:
    """``name=[v1 v2]`` per header, space-separated (seldon's ``--verbose`` rendering)."""
    return " ".join(f"{name}=[{' '.join(values)}]" for name, values in headers_map(message).items())


def raw_line(topic: str, message: KafkaMessage, value: Any, *, verbose: bool) -> str:
    """``<topic> <key> <value>`` and, verbose, the headers (seldon's raw format)."""
    line = f"{topic} {shown_key(message)} {dumps(value)}"
    return f"{line} {headers_text(message)}" if verbose and message.headers else line


def json_entry(message: KafkaMessage, value: Any, *, verbose: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": shown_key(message), "value": value}
    if verbose:
        entry["headers"] = headers_map(message)
        entry["partition"] = message.partition
        entry["offset"] = message.offset
    return entry


def _header(message: KafkaMessage, name: str) -> str | None:
    for key, value in reversed(message.headers):
        if key.lower() == name:
            return value.decode(errors="replace")
    return None


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _proto(value: bytes, message: Message) -> dict[str, Any] | None:
    try:
        message.ParseFromString(value)
    except DecodeError:
        return None
    return json_format.MessageToDict(message)
