"""Logging setup: human-readable text, or one JSON object per line for log pipelines.

JSON lines carry time (UTC, RFC 3339 with milliseconds), level, logger and message, plus the
structured fields a log call passes with `extra=` (node_id, type, version or versions, group, file, error...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every batch of changes at info


class _Stderr:
    """Whatever sys.stderr is when a record is written (native_log_lines moves it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# gRPC's C core writes abseil-style lines to file descriptor 2, e.g.
# `I1201 07:09:49.369516    9417 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: ...`
NATIVE_LINE = re.compile(r"([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)")
NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
NATIVE_LOGGER = "grpc.core"


@contextmanager
def native_log_lines() -> Iterator[None]:
    """Meanwhile, lines native code (gRPC's C core) writes to the process's stderr become log records of
    logger grpc.core, with their level and `source` (file:line): they follow --log-format and --log-level.

    Python's own output keeps going to the real stderr. Does nothing when sys.stderr is not the process's
    (under a test runner's capture)."""
    python_stderr = sys.stderr
    if python_stderr is not sys.__stderr__ or python_stderr is None:
        yield
        return
    python_stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    sys.stderr = open(saved, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.dup2(write_end, 2)
    os.close(write_end)
    relay = threading.Thread(target=_relay, args=(read_end,), name="native-stderr", daemon=True)
    relay.start()
    try:
        yield
    finally:
        os.dup2(saved, 2)  # the pipe's last writer closes: the relay reads what is left and ends
        relay.join(timeout=1.0)
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(saved)


def _relay(read_end: int) -> None:
    log = logging.getLogger(NATIVE_LOGGER)
    with open(read_end, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", "backslashreplace").rstrip("\n")
            if parsed := NATIVE_LINE.fullmatch(line):
                level, source, message = parsed.groups()
                log.log(NATIVE_LEVELS[level], "%s", message, extra={"source": source})
            elif line.strip():
                log.warning("%s", line)
