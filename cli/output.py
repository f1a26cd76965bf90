"""Printing: compact protobuf JSON (Seldon's camelCase names) on stdout, tables via rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

JSON = "json"
TABLE = "table"


def message_dict(message: Message) -> dict[str, Any]:
    # Defaults are omitted and int64 become strings, exactly like Go's protojson used by seldon.
    return json_format.MessageToDict(message)


def dumps(value: Any) -> str:
    # Single-line JSON like the seldon CLI, so output pipes straight into jq or a test.
    return json.dumps(value, separators=(",", ":"))


def print_json(value: Any) -> None:
    print(dumps(value), file=sys.stdout, flush=True)


def print_message(message: Message) -> None:
    print_json(message_dict(message))


def print_messages(messages: Iterable[Message]) -> None:
    print_json([message_dict(m) for m in messages])


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    # Built per call so tests that swap sys.stdout capture it; wide so columns are not cut in pipes.
    console = Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None)
    console.print(table)


def print_error(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)


def human_bytes(count: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    value = float(count)
    index = 0
    while value >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{count}B" if index == 0 else f"{value:.1f}{units[index]}"
