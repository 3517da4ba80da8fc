"""Logging setup: human-readable text, or one JSON object per line for log pipelines.

JSON lines carry time (UTC, RFC 3339 with milliseconds), level, logger and message, plus the
structured fields a log call passes with `extra=` (node_id, type, version or versions, group, file, error...).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: in a text log, a
# client's newline would start a line that looks like the server's own.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b...): one line, nothing hidden."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, and how many were cut: `abc…(1234 more)`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text) - limit} more)"


def clip(text: str, limit: int) -> str:
    """Client-supplied text as it may be logged or shown: cut to `limit` characters, control characters escaped."""
    return escape_controls(shorten(text, limit))


class TextFormatter(logging.Formatter):
    """The text format, one line per message: control characters in messages are escaped (tracebacks stay)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at `level` ("debug", "info"...), as "text" or "json"."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch of changes at info
