"""Bad input in directory mode: each bad file gets one clear error naming the file (and the field), the
good files keep being served, and the limits (file size, documents per file, listeners per resource)
hold without reading or reporting more than they must. The running control plane is tested in
tests/e2e/test_bad_files.py, Kubernetes mode in tests/test_operator_bad_input.py.
"""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import pytest
import yaml

from tests.support.bad_files import BAD_FILES, BadFile, listener, many_listeners, vs_yaml
from xds_operator.api import ValidationError, parse_virtual_service
from xds_operator.cli import main
from xds_operator.sources.directory import DirectorySource
from xds_operator.sources.loader import MAX_FILE_BYTES, read_file
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import LISTENER

INGRESS = {"app": "envoy-ingress"}


def write_bad_files(directory: Path) -> None:
    for bad in BAD_FILES:
        (directory / bad.name).write_bytes(bad.content)
    (directory / "good.yaml").write_text(vs_yaml("good"))


@pytest.mark.parametrize("bad", BAD_FILES, ids=[bad.name for bad in BAD_FILES])
def test_a_bad_file_gets_one_error_naming_the_file_and_the_field(tmp_path: Path, bad: BadFile) -> None:
    path = tmp_path / bad.name
    path.write_bytes(bad.content)
    contents = read_file(path)
    assert contents.services == []
    [error] = contents.errors
    assert error.startswith(f"{path}: ") and bad.error in error
    assert len(error) < 300


def test_a_directory_of_bad_files_keeps_serving_the_good_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_bad_files(tmp_path)
    cache = SnapshotCache()
    with caplog.at_level(logging.ERROR, logger="xds_operator.sources.directory"):
        DirectorySource(tmp_path, cache).load()
    assert set(cache.virtual_services()) == {("default", "good")}
    assert set(cache.snapshot_for(INGRESS).resources[LISTENER]) == {"good-l"}
    logged = [record.getMessage() for record in caplog.records]
    for bad in BAD_FILES:
        assert any(message.startswith(f"{tmp_path / bad.name}: ") and bad.error in message for message in logged)
    assert len(logged) == len(BAD_FILES), "one line per bad file"


def test_validate_command_names_every_bad_file_and_passes_the_good_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_bad_files(tmp_path)
    assert main(["validate", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    for bad in BAD_FILES:
        assert f"{tmp_path / bad.name}: " in captured.err
        assert f"{tmp_path / bad.name}: 0 valid VirtualService(s), 1 problem(s)" in captured.out
    assert f"{tmp_path / 'good.yaml'}: 1 valid VirtualService(s), 0 problem(s)" in captured.out
    assert "Traceback" not in captured.err


def test_a_ten_megabyte_file_is_refused_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(next(bad.content for bad in BAD_FILES if bad.name == "ten-mb.yaml"))
    tracemalloc.start()
    try:
        contents = read_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert contents.unreadable and "larger than the limit" in contents.errors[0]
    assert peak < 2 * MAX_FILE_BYTES, f"read {peak} bytes into memory for a refused file"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = vs_yaml("edge")
    path = tmp_path / "edge.yaml"
    path.write_text(text + "#" * (MAX_FILE_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert [vs.name for vs in read_file(path).services] == ["edge"]


def test_ten_thousand_listeners_are_one_short_error() -> None:
    document = yaml.safe_load(vs_yaml("wide"))
    document["spec"]["listeners"] = many_listeners(10_000)
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(document)
    assert [str(e) for e in caught.value.errors] == ["spec.listeners: must have at most 64 items, got 10000"]
    document["spec"]["listeners"] = document["spec"]["listeners"][:64]
    assert len(parse_virtual_service(document).spec.listeners) == 64  # the limit itself is fine


def test_thousands_of_problems_are_reported_as_the_first_twenty_and_a_count() -> None:
    document = yaml.safe_load(vs_yaml("odd"))
    document["spec"]["selector"] = {f"key{i}": i for i in range(5000)}  # 5,000 values that are not strings
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(document)
    errors = [str(e) for e in caught.value.errors]
    assert len(errors) == 20
    assert errors[0] == "spec.selector.key0: expected a string, got an integer"
    assert errors[-1] == "spec.selector.key19: expected a string, got an integer (and 4980 more problems)"


# Characters that matter to Envoy in listener and cluster names, and why the proto's pattern
# ([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?, at most 200) must keep them out. Envoy's own
# validation accepts any string here (checked with `envoy --mode validate`), so the pattern is
# the only guard:
#   ":" and "/"   a name starting "xdstp://" is an xDS-TP resource locator to Envoy, not a name; ":" is
#                 also rewritten to "_" in stat names, so two names could share their stats
#   "*"           a subscription to "*" is the wildcard: every resource of the type
#   "::"          the separator of the admin /clusters output
#   whitespace, control characters (NUL, newline), non-ASCII: break logs, stats and the admin output
#   "." or "-" at the ends, ""  stat names with empty segments; a name must not be empty
ENVOY_UNSAFE_NAMES = [
    "xdstp://authority/envoy.config.cluster.v3.Cluster/c",
    "a:b",
    "a/b",
    "*",
    "a::b",
    "a b",
    "a\tb",
    "a\nb",
    "a\x00b",
    "café",
    ".a",
    "a.",
    "-a",
    "a" * 201,
]


@pytest.mark.parametrize("name", ENVOY_UNSAFE_NAMES)
@pytest.mark.parametrize("field", ["listener", "cluster"])
def test_names_with_characters_envoy_treats_specially_are_rejected(field: str, name: str) -> None:
    document = yaml.safe_load(vs_yaml("names", listeners=f"[{listener(0)}]"))
    item = document["spec"]["listeners"][0]
    target, path = (item, "spec.listeners[0].name") if field == "listener" else (item["udp"]["cluster"], None)
    target["name"] = name
    path = path or "spec.listeners[0].udp.cluster.name"
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(document)
    [error] = caught.value.errors
    assert error.path == path
    assert "must match" in error.message or "at most 200 characters" in error.message


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("creationTimestamp", {"a": 1}, "metadata.creationTimestamp: expected a timestamp, got an object"),
        ("uid", 7, "metadata.uid: expected a string, got an integer"),
        ("namespace", "x" * 5000, "metadata.namespace: 'xxxxxxxxxx"),
        ("name", ["deep"] * 3, "metadata.name: required"),
    ],
)
def test_mistyped_metadata_is_a_field_error(field: str, value: object, error: str) -> None:
    document = yaml.safe_load(vs_yaml("meta"))
    document["metadata"][field] = value
    with pytest.raises(ValidationError) as caught:
        parse_virtual_service(document)
    [problem] = caught.value.errors
    assert str(problem).startswith(error) and len(str(problem)) < 200


def created(timestamp: str) -> int | None:
    """The parsed creationTimestamp of a document carrying `timestamp` as written in YAML."""
    document = yaml.safe_load(
        vs_yaml("meta").replace("namespace: default}", f"namespace: default, creationTimestamp: {timestamp}}}")
    )
    return parse_virtual_service(document).created


def test_creation_timestamps_are_instants_not_text() -> None:
    assert created("'2026-01-01T01:00:00+02:00'") < created("'2026-01-01T00:30:00Z'")  # 23:00 UTC the day before
    assert created("'2026-01-01T00:30:00Z'") < created("'2026-01-01T00:30:00.5Z'")
    assert created("'2026-01-01T00:30:00.000000001Z'") - created("'2026-01-01T00:30:00Z'") == 1  # nanoseconds
    assert created("2026-01-01T00:30:00Z") == created("'2026-01-01T00:30:00Z'")  # unquoted: YAML's datetime
    assert created("'2020-01-01T00:00:00z'") == 1577836800 * 10**9


@pytest.mark.parametrize(
    ("timestamp", "problem"),
    [
        ("'0-not-a-date'", "'0-not-a-date' is not an RFC 3339 date-time"),
        ("'2026-13-01T00:00:00Z'", "is not an RFC 3339 date-time"),
        ("'2026-01-01T00:00:00'", "is not an RFC 3339 date-time"),  # no offset
        ("'2026-01-01 00:00:00Z'", "is not an RFC 3339 date-time"),
        ("'2026-01-01T00:00:00+24:00'", "is not an RFC 3339 date-time"),
        ("2024-01-02", "2024-01-02 is a date without a time"),  # unquoted: YAML's date
        ("2024-01-02 10:00:00", "has no time zone offset"),  # unquoted: a datetime without a zone
    ],
)
def test_a_creation_timestamp_that_is_not_rfc_3339_is_a_field_error(timestamp: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        created(timestamp)
    [error] = caught.value.errors
    assert error.path == "metadata.creationTimestamp" and problem in error.message
