"""One logging set-up for every meshserve process: one logfmt line per event on stderr.

Contract: a process calls :func:`configure_logging` once, from its ``main`` (library code and
tests never do). Modules log through ``get_logger("meshserve.<subsystem>")`` (or structlog's
``get_logger`` with the same name); every line carries that name as ``logger=``, so the lines of
the scheduler's API, its agent stream and the xDS server can be told apart in one file::

    timestamp=2026-12-01T10:00:00Z level=info logger=meshserve.scheduler.api event="model loaded"

The name costs one dict entry per event: loggers are cached on first use and keep their name, so
no stdlib ``logging`` round trip is made. Records of stdlib loggers (grpc, aiohttp, aiokafka) go to
the same stream, at the same level, in the same logfmt shape with their time (a client's retries and
rejoins are read against the process's own events).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

LEVELS = ("debug", "info", "warning", "error", "critical")
KEY_ORDER = ["timestamp", "level", "logger", "event"]


class NamedPrintLogger(structlog.PrintLogger):
    """structlog's PrintLogger, remembering the name it was created under."""

    def __init__(self, file: TextIO | None = None, name: str = "") -> None:
        super().__init__(file)
        self.name = name


class NamedPrintLoggerFactory:
    """Like ``structlog.PrintLoggerFactory``, but the first positional argument names the logger."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file

    def __call__(self, *args: Any) -> NamedPrintLogger:
        return NamedPrintLogger(self._file, str(args[0]) if args else "")


def add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Put the logger's name in the event, unless the event already names one (a bound ``logger``)."""
    name = getattr(logger, "name", "")
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


class LogfmtFormatter(logging.Formatter):
    """A stdlib record as the line structlog renders: ``timestamp= level= logger= event=``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        level = record.levelname.lower()
        return f"timestamp={stamp} level={level} logger={record.name} event={json.dumps(message)}"


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for this process; ``level`` is one of :data:`LEVELS`."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    output = stream or sys.stderr
    handler = logging.StreamHandler(output)
    handler.setFormatter(LogfmtFormatter())
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            # logfmt: greppable, and several times cheaper than the console renderer.
            structlog.processors.LogfmtRenderer(key_order=KEY_ORDER),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=NamedPrintLoggerFactory(output),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """The logger of one subsystem, e.g. ``meshserve.agent``; its lines carry ``logger=<name>``."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))
