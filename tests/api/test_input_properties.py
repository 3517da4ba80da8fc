"""Property tests (hypothesis) for bad input: the validator never raises anything but ValidationError,
every message has a field path, and whatever it accepts translates.

Inputs are valid VirtualServices drawn over the whole schema, the same mutated (wrong types,
missing and extra fields, out-of-range numbers, odd strings, deep nesting, huge lists), and
serialized files with bytes spliced in. Settings: tests/vs_strategies.py (derandomized, no deadline).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import event, given
from hypothesis import strategies as st

from tests.support.vs_strategies import examples, listener_block, mutated, virtual_services
from xds_operator.api import ValidationError, parse_virtual_service
from xds_operator.api.validate import MAX_REPORTED_ERRORS
from xds_operator.sources.loader import read_file
from xds_operator.translate import translate_virtual_service
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import LISTENER

TOP_LEVEL = re.compile(r"^(\(document\)|apiVersion|kind|metadata|spec|status)([.\[]|$)")
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
FAKE_POD_IPS = ("10.1.0.7", "fd00::7")


def resolve_pods(namespace: str, selector: Any) -> tuple[str, ...]:
    """Every selector resolves to two pods, so selector endpoints reach the translated output too."""
    return FAKE_POD_IPS


def assert_well_formed(error: ValidationError) -> None:
    assert 1 <= len(error.errors) <= MAX_REPORTED_ERRORS
    for problem in error.errors:
        assert problem.message
        # A path that starts at a top-level field; an unknown top-level field is its own path.
        assert TOP_LEVEL.match(problem.path) or problem.message.startswith("unknown field"), problem
        assert len(str(problem)) < 500, "messages quote values cut short"


@examples(100)
@given(virtual_services())
def test_valid_documents_are_accepted_and_translate(document: dict) -> None:
    vs = parse_virtual_service(document)
    resources = translate_virtual_service(vs, resolve_pods)
    spec_listeners = document["spec"]["listeners"]
    assert [listener.name for listener in resources.listeners] == [item["name"] for item in spec_listeners]
    # A UDP listener with a session limit gets a private copy of its cluster (translate.envoy_cluster_name).
    assert [cluster.name for cluster in resources.clusters] == [
        listener_block(item)["cluster"]["name"] + (f"@{item['name']}" if "max_sessions" in item.get("udp", {}) else "")
        for item in spec_listeners
    ]
    eds = [item for item in spec_listeners if listener_block(item)["cluster"].get("service_discovery") == "eds"]
    assert len(resources.load_assignments) == len(eds)
    for message in [*resources.listeners, *resources.clusters, *resources.load_assignments]:
        assert message.SerializeToString(deterministic=True)
    # And through the cache, into the snapshot a proxy with the selector's labels gets.
    cache = SnapshotCache(resolve_pods)
    cache.upsert(vs)
    cache.commit()
    snapshot = cache.snapshot_for(dict(document["spec"]["selector"]))
    assert set(snapshot.resources[LISTENER]) == {item["name"] for item in spec_listeners}


@examples(200)
@given(mutated())
def test_mutated_documents_raise_only_validation_errors_and_accepted_ones_translate(document: Any) -> None:
    try:
        vs = parse_virtual_service(document)
    except ValidationError as error:
        assert_well_formed(error)
        event("rejected")
        return
    event("accepted")
    translate_virtual_service(vs, resolve_pods)


@examples(50)
@given(st.lists(virtual_services(), min_size=1, max_size=3), st.data())
def test_files_with_bytes_spliced_in_never_crash_the_reader(documents: list[dict], data: st.DataObject) -> None:
    text = yaml.dump_all(documents, Dumper=DUMPER, sort_keys=False, allow_unicode=data.draw(st.booleans())).encode()
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        text = text[:at] + data.draw(st.binary(max_size=4)) + text[at + cut :]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "vs.yaml"
        path.write_bytes(text)
        contents = read_file(path)
    event(f"{len(contents.services)} accepted, {'some' if contents.errors else 'no'} problems")
    for problem in contents.errors:
        assert problem.startswith(f"{path}: "), "every problem names the file"
    for vs in contents.services:
        translate_virtual_service(vs, resolve_pods)


@examples(25)
@given(st.lists(virtual_services(), min_size=1, max_size=3, unique_by=lambda d: d["metadata"]["name"]))
def test_valid_documents_read_back_from_a_file_unchanged(documents: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "vs.yaml"
        path.write_text(yaml.dump_all(documents, Dumper=DUMPER, sort_keys=False))
        contents = read_file(path)
    assert contents.errors == []
    assert [vs.spec for vs in contents.services] == [parse_virtual_service(d).spec for d in documents]
