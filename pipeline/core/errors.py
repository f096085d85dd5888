"""Every error Casewatch raises on purpose, in one tree.

    CasewatchError
    ├── ConfigError            the rules file (or the environment's settings) is invalid: file,
    │                          path inside it, and the fix; the command exits 2
    ├── HandleError            `casewatch handle`: no such exception id, row or topic
    ├── InvalidEvent           an input message cannot be an event; goes to the dead-letter topic
    ├── KafkaAccessError       Kafka refused this client: credentials rejected, TLS failed
    ├── ReportError            `casewatch report`: a topic to read is not there
    ├── SinkError              an output could not be written
    │   ├── RetryableSinkError     a broker or network hiccup: the same write may succeed later
    │   └── FatalSinkError         the write can never succeed as is (authorisation, record too big)
    └── Unavailable            what the command needs from this host is not there: Kafka does not
                               answer, the metrics port is taken; the command exits 1

Whether a sink error is worth retrying is carried by its type, not by its message.
"""

from __future__ import annotations


class CasewatchError(Exception):
    """The root of every error Casewatch raises on purpose."""


class ConfigError(CasewatchError):
    """The config file is invalid. Each problem names the file, the place and the fix."""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.file = file
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{file}: {count}:\n{lines}")


class HandleError(CasewatchError):
    """What the handler asked for is not there: an exception id, a row, or the topic itself."""


class InvalidEvent(CasewatchError):
    """A message that is not a valid event.

    `reason` is the sentence a person reads on the dead-letter record; `error_class`
    is a short stable code (`json_invalid`, `field_missing`, ...) to group and count by.
    """

    def __init__(self, reason: str, error_class: str) -> None:
        self.reason = reason
        self.error_class = error_class
        super().__init__(reason)


class KafkaAccessError(CasewatchError):
    """Kafka refused this client: its credentials, or the TLS handshake. The message names the
    environment variable to fix and never holds a secret."""


class ReportError(CasewatchError):
    """The input of `casewatch report` cannot be read: a topic that is not there."""


class SinkError(CasewatchError):
    """An output could not be written."""


class RetryableSinkError(SinkError):
    """A transient failure: the same write may succeed if tried again."""


class FatalSinkError(SinkError):
    """A permanent failure: retrying the same write cannot succeed."""


class Unavailable(CasewatchError):
    """What a command needs from the host it runs on is not there (Kafka does not answer, a port
    is taken). The message names the address and the variable or action that fixes it."""
