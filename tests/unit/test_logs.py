"""A worker's log off a terminal: the line mode writes, without the cost of colorlog."""

from __future__ import annotations

import io
import logging

import faust  # noqa: F401  (registers Faust's argument formatters with mode)
from mode.utils.logging import (
    DEFAULT_COLOR_FORMAT,
    DEFAULT_COLORS,
    ExtensionFormatter,
    setup_logging,
)

from pipeline.runtime.logs import Plain, logging_config


def _record(name: str) -> logging.LogRecord:
    args = ("open", "missing_delivery", "c-1", {"order_id": "o-1"})
    return logging.LogRecord(
        name, logging.INFO, "x.py", 1, "exception: %s %s customer=%s subject=%s", args, None
    )


def test_the_plain_line_is_modes_line_without_colours() -> None:
    mode = ExtensionFormatter(
        stream=io.StringIO(), fmt=DEFAULT_COLOR_FORMAT, log_colors=DEFAULT_COLORS
    )
    for name in ("pipeline.runtime.worker", "faust.worker"):
        plain, theirs = Plain().format(_record(name)), mode.format(_record(name))
        assert "\x1b" not in plain
        # the same line but for the time stamp (milliseconds apart)
        assert plain.split("] ", 1)[1] == theirs.split("] ", 1)[1]
        assert plain.endswith("customer=c-1 subject={'order_id': 'o-1'} ")


def test_the_worker_logs_through_the_plain_formatter_at_its_level() -> None:
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        setup_logging(loglevel="warning", logging_config=logging_config("warning"))
        (handler,) = logging.root.handlers
        assert isinstance(handler.formatter, Plain)
        assert logging.root.level == logging.WARNING
        assert not logging.getLogger("pipeline.x").isEnabledFor(logging.INFO)
    finally:
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
