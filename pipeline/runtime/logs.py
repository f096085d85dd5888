"""The worker's log lines when they do not go to a terminal (a file, a pipe, a container's log).

Mode formats every record with colorlog's formatter, which builds its colour table for each line
even when it then leaves the colours out: about ten times the cost of plain formatting, paid on
every exception and routing line. Off a terminal, Casewatch's own records are formatted plainly,
as the same line without colours; Faust's and mode's keep mode's formatter, whose argument
formatting draws their assignment tables.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from mode.utils.logging import DEFAULT_COLOR_FORMAT, ExtensionFormatter

# mode's line: "[time] [pid] [LEVEL] message extra"
_PLAIN = DEFAULT_COLOR_FORMAT.replace("%(log_color)s", "")


class Plain(logging.Formatter):
    """Mode's log line without colours; Casewatch's records without mode's extensions."""

    def __init__(self, fmt: str = _PLAIN) -> None:
        super().__init__(fmt)
        self._mode = ExtensionFormatter(stream=io.StringIO(), fmt=fmt)  # not a tty: no colours

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("pipeline."):
            record.extra = ""
            return super().format(record)
        return self._mode.format(record)


def logging_config(level: str) -> dict[str, Any]:
    """mode's `logging_config` for a worker whose log is not a terminal."""
    return {
        "merge": True,  # mode's own config, with its default handler replaced
        "formatters": {"plain": {"()": f"{__name__}.Plain"}},
        "handlers": {
            "default": {
                "level": level.upper(),
                "class": "logging.StreamHandler",
                "formatter": "plain",
            }
        },
    }


__all__ = ["Plain", "logging_config"]
