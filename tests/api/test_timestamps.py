"""RFC 3339 times (api/timestamps.py): read into nanoseconds since the epoch, so that the older of
two VirtualServices (which wins a conflict) is the older instant whatever the offsets written."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
import yaml

from xds_operator.api import ValidationError, parse_virtual_service
from xds_operator.api.timestamps import datetime_nanoseconds, now_rfc3339, parse_rfc3339

HOUR = 3600 * 10**9


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01t00:00:00z", 0),
        ("1970-01-01T02:00:00+02:00", 0),  # the same instant
        ("1969-12-31T23:30:00-00:30", 0),
        ("1970-01-01T00:00:00.5Z", 500_000_000),
        ("1970-01-01T00:00:00.000000001Z", 1),
        ("1970-01-01T00:00:00.1234567899999Z", 123_456_789),  # past nanoseconds: dropped, not rounded
        ("1969-12-31T23:59:59Z", -(10**9)),
        ("2024-02-29T12:00:00Z", 1_709_208_000 * 10**9),
        ("9999-12-31T23:59:59Z", 253_402_300_799 * 10**9),
    ],
)
def test_an_rfc3339_time_is_an_instant_in_nanoseconds(text: str, nanoseconds: int) -> None:
    assert parse_rfc3339(text) == nanoseconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-02",
        "2024-01-02T15:04:05",  # no offset: no instant
        "2024-01-02 15:04:05Z",
        "2024-13-01T00:00:00Z",
        "2023-02-29T00:00:00Z",
        "2024-01-02T24:00:00Z",
        "2024-01-02T23:59:60Z",  # a leap second: Kubernetes never writes one
        "2024-01-02T15:04:05+24:00",
        "2024-01-02T15:04:05+01:60",
        "0000-01-01T00:00:00Z",
        "２０２４-01-02T15:04:05Z",  # digits of another script, which int() would read
        "2024-01-02T15:04:05.Z",
        "2024-01-02T15:04:05Z ",
        "x" * 100_000,
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_a_fraction_of_any_length_is_read() -> None:
    assert parse_rfc3339("1970-01-01T00:00:01." + "9" * 100_000 + "Z") == 1_999_999_999


def test_a_yaml_datetime_is_the_same_instant_and_a_naive_one_is_refused() -> None:
    assert datetime_nanoseconds(datetime(1970, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))) == 0
    assert datetime_nanoseconds(datetime(1970, 1, 1, 0, 0, 0, 5, tzinfo=UTC)) == 5000
    with pytest.raises(ValueError):
        datetime_nanoseconds(datetime(1970, 1, 1))


def test_now_is_written_as_kubernetes_writes_it_and_reads_back() -> None:
    now = now_rfc3339()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now)
    assert parse_rfc3339(now) % 10**9 == 0


def created(timestamp: str) -> int | None:
    """metadata.creationTimestamp of a VirtualService document as YAML reads it."""
    document = yaml.safe_load(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: a, creationTimestamp: {timestamp}}}\n"
        "spec:\n  selector: {app: x}\n  listeners:\n  - name: l\n    udp:\n      port: 1\n"
        "      cluster: {name: c, endpoints: [{name: w, host: {address: 10.0.0.1}, port: 1}]}\n"
    )
    return parse_virtual_service(document).created


def test_a_creation_timestamp_quoted_or_not_is_the_same_instant() -> None:
    # Unquoted, YAML reads a datetime; quoted, a string: both are the same instant, whatever the offset.
    assert (
        created("2024-01-02T15:04:05Z") == created("'2024-01-02T15:04:05Z'") == created("'2024-01-02T17:04:05+02:00'")
    )
    assert created("'2024-01-02T15:04:05Z'") - created("'2024-01-02T14:04:05Z'") == HOUR


def test_a_creation_timestamp_in_other_digits_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        created("'２０２４-01-02T15:04:05Z'")
    [problem] = error.value.errors
    assert problem.path == "metadata.creationTimestamp" and "is not an RFC 3339 date-time" in problem.message
