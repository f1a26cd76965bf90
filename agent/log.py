"""The agent's logger; the process-wide set-up is ``apis.logs.configure_logging``."""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

from apis.logs import get_logger as _named_logger

LOGGER_NAME = "meshserve.agent"


def get_logger() -> FilteringBoundLogger:
    return _named_logger(LOGGER_NAME)
