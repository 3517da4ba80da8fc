"""Kubernetes timestamps: RFC 3339 date-times, read as nanoseconds since the epoch and written in UTC.

Nanoseconds (an int) compare as instants, whatever the offset a time was written with, and keep
the fraction Kubernetes may write (metav1.MicroTime), which a float would round.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import NewType

# RFC 3339 date-time (section 5.6): what Kubernetes writes, e.g. 2024-01-02T15:04:05Z or ...05.5+02:00.
# ASCII digits only: `\d` would also take other scripts' digits (２０２４), which int() reads.
RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NANOSECONDS = 10**9


# An instant as nanoseconds since the Unix epoch: instants compare as numbers (RFC 3339 text does not, across
# time zone offsets and fractions of a second).
EpochNanos = NewType("EpochNanos", int)


def parse_rfc3339(text: str) -> EpochNanos:
    """Nanoseconds since the epoch of an RFC 3339 date-time; ValueError if it is not one, or names no real
    instant (month 13, 25 o'clock, an offset of 24 hours). Digits of a fraction past nanoseconds are
    dropped; a leap second (:60) is refused, as Kubernetes never writes one."""
    match = RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second, fraction, sign, offset_hours, offset_minutes = match.groups()
    try:
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError:
        raise ValueError(f"{text!r} names no real date and time") from None
    offset = 0
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise ValueError(f"{text!r} has no real time zone offset")
        offset = (-1 if sign == "-" else 1) * (int(offset_hours) * 3600 + int(offset_minutes) * 60)
    seconds = (local - EPOCH) // timedelta(seconds=1) - offset
    return EpochNanos(seconds * NANOSECONDS + int((fraction or "").ljust(9, "0")[:9]))


def datetime_nanoseconds(value: datetime) -> EpochNanos:
    """Nanoseconds since the epoch of a datetime that says its time zone (YAML reads an unquoted
    timestamp into one); ValueError for a naive one, which names no instant."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("the date-time has no time zone offset")
    return EpochNanos((value - EPOCH) // timedelta(microseconds=1) * 1000)


def now_rfc3339() -> str:
    """The current time as Kubernetes writes a metav1.Time (a condition's lastTransitionTime, an Event's)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
