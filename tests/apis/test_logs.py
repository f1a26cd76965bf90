from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from apis.logs import configure_logging, get_logger


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    output = io.StringIO()
    configure_logging("debug", stream=output)
    yield output
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_every_line_names_its_logger(stream: io.StringIO) -> None:
    get_logger("meshserve.scheduler.api").info("model loaded", model="iris")
    line = stream.getvalue().strip()
    assert ' level=info logger=meshserve.scheduler.api event="model loaded" model=iris' in line
    assert line.startswith("timestamp=")


def test_module_level_structlog_loggers_keep_their_name(stream: io.StringIO) -> None:
    # How scheduler and xdsserver modules declare theirs: a lazy proxy, bound on first use.
    log = structlog.get_logger("meshserve.xds")
    log.warning("nack", node="envoy-1")
    assert "level=warning logger=meshserve.xds event=nack node=envoy-1" in stream.getvalue()


def test_a_bound_logger_name_is_kept_and_levels_filter(stream: io.StringIO) -> None:
    get_logger("meshserve.agent").bind(logger="meshserve.agent.client").info("registered")
    configure_logging("warning", stream=stream)
    get_logger("meshserve.agent").info("hidden")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "logger=meshserve.agent.client event=registered" in lines[0]


def test_stdlib_records_share_the_stream(stream: io.StringIO) -> None:
    logging.getLogger("grpc").warning("channel closed")
    line = stream.getvalue()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z"
    assert re.fullmatch(rf'timestamp={stamp} level=warning logger=grpc event="channel closed"\n', line), line


def test_stdlib_exceptions_stay_on_the_line(stream: io.StringIO) -> None:
    try:
        raise OSError("refused")
    except OSError:
        logging.getLogger("aiokafka").exception("connect failed")
    assert 'logger=aiokafka event="connect failed\\nTraceback' in stream.getvalue()
    assert "OSError: refused" in stream.getvalue()


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("loud")
