"""The one loader of VirtualService files (sources/loader.py), and what its readers make of it:
limits, problems per file, a name defined twice, what a broken file may still define, and the
demo's plan, decided by the control plane's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xds_operator.demo.main import make_plan
from xds_operator.sources.loader import MAX_DOCUMENTS, MAX_FILE_BYTES, load, parse_file, read_file


def vs_yaml(
    name: str,
    *,
    port: int = 2000,
    cluster: str | None = None,
    endpoint_port: int = 9000,
    created: str | None = None,
    kind: str = "VirtualService",
) -> str:
    """One VirtualService document: a UDP listener NAME-l on `port` to cluster `cluster` (NAME-c)."""
    stamp = f", creationTimestamp: '{created}'" if created else ""
    return (
        f"apiVersion: servicemesh.l7mp.io/v1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: default{stamp}}}\n"
        "spec:\n  selector: {app: envoy-ingress}\n"
        f"  listeners:\n  - name: {name}-l\n    udp:\n      port: {port}\n"
        f"      cluster: {{name: {cluster or name + '-c'}, "
        f"endpoints: [{{name: w-{endpoint_port}, host: {{address: 127.0.0.1}}, port: {endpoint_port}}}]}}\n"
    )


def names(contents_or_loaded) -> list[str]:
    services = contents_or_loaded.services
    return [vs.name for vs in (services.values() if isinstance(services, dict) else services)]


# -- one file, from its bytes ---------------------------------------------------------------


def test_a_file_of_exactly_the_size_limit_is_read_and_one_byte_more_is_refused() -> None:
    document = vs_yaml("edge") + "# "
    at_limit = (document + "x" * (MAX_FILE_BYTES - len(document) - 1) + "\n").encode()
    assert len(at_limit) == MAX_FILE_BYTES
    assert names(parse_file(Path("f.yaml"), at_limit)) == ["edge"]

    over = parse_file(Path("f.yaml"), at_limit + b"\n")
    assert over.services == [] and over.unreadable
    assert over.errors == [f"f.yaml: file is larger than the limit of {MAX_FILE_BYTES} bytes; skipped"]


def test_the_document_limit_counts_documents_not_bytes() -> None:
    at_limit = ("---\nkind: Other\n" * (MAX_DOCUMENTS - 1) + "---\n" + vs_yaml("last")).encode()
    contents = parse_file(Path("f.yaml"), at_limit)
    assert names(contents) == ["last"] and contents.other_kinds == MAX_DOCUMENTS - 1

    over = parse_file(Path("f.yaml"), at_limit + b"---\nkind: Other\n")
    assert over.services == [] and over.unreadable
    assert over.errors == [
        f"f.yaml: more than {MAX_DOCUMENTS} YAML documents, the limit per file; the whole file is skipped (split it)"
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"kind: VirtualService\nmetadata: {name: \xff}\n", "f.yaml: not UTF-8 text (invalid start byte at byte 38)"),
        (b"spec: [unclosed\n", "f.yaml: invalid YAML: line 2, column 1"),
        (b"a: !!python/object:os.system ls\n", "f.yaml: invalid YAML: "),  # safe loading: no object built
        (b"a: *nowhere\n", "f.yaml: invalid YAML: line 1, column 4: found undefined alias"),
        (b"a: " + b"[" * 5000 + b"]" * 5000, "f.yaml: invalid YAML: "),  # nesting beyond libyaml's limit
        (b"x: 2024-02-30\n", "f.yaml: document 1: invalid YAML value: day is out of range for month"),
    ],
    ids=["latin-1", "unclosed", "python-tag", "undefined-alias", "deep", "bad-date"],
)
def test_an_unreadable_file_is_one_problem_naming_it(data: bytes, problem: str) -> None:
    contents = parse_file(Path("f.yaml"), data)
    assert contents.services == [] and contents.unreadable
    [error] = contents.errors
    assert error.startswith(problem) and error.endswith("skipped")


def test_each_document_counts_on_its_own() -> None:
    text = "\n---\n".join(
        [
            vs_yaml("good"),
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n",
            vs_yaml("typo", kind="VirtualServic"),  # a near miss of the kind is a broken VirtualService
            vs_yaml("bad", port=70000),
            "- a list\n",
            "",  # an empty document
        ]
    )
    contents = parse_file(Path("f.yaml"), text.encode())
    assert names(contents) == ["good"]
    assert (contents.other_kinds, contents.rejected, contents.unreadable) == (1, 3, False)
    assert contents.invalid_keys == {("default", "typo"), ("default", "bad")} and contents.unnamed_invalid
    assert any(e.startswith("f.yaml: document 4 (default/bad): spec.listeners[0].udp.port") for e in contents.errors)
    assert any(e.startswith("f.yaml: document 5: (document): expected a mapping") for e in contents.errors)


# -- what a broken file may still define (serve --dir keeps serving it) ------------------------


def test_a_vanished_virtualservice_may_still_be_defined_only_if_the_read_failed_where_it_could_be() -> None:
    before = parse_file(Path("f.yaml"), (vs_yaml("a") + "---\n" + vs_yaml("b", port=2001)).encode())

    deleted = parse_file(Path("f.yaml"), vs_yaml("a").encode())
    assert deleted.may_still_define(before) == []  # b is gone: a deletion

    broken_b = parse_file(Path("f.yaml"), (vs_yaml("a") + "---\n" + vs_yaml("b", port=0)).encode())
    assert names_of(broken_b.may_still_define(before)) == ["b"]

    nameless = parse_file(Path("f.yaml"), (vs_yaml("a") + "---\n- not a mapping\n").encode())
    assert names_of(nameless.may_still_define(before)) == ["b"]  # that document may be b

    unreadable = parse_file(Path("f.yaml"), b"spec: [unclosed\n")
    assert names_of(unreadable.may_still_define(before)) == ["a", "b"]


def names_of(services: list) -> list[str]:
    return [vs.name for vs in services]


# -- many files at once (validate, render, the demo) ------------------------------------------


def test_load_reads_a_file_once_and_keeps_the_first_definition_of_a_name(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(vs_yaml("calls", port=2000))
    second = tmp_path / "b.yaml"
    second.write_text(vs_yaml("calls", port=3000) + "---\n" + vs_yaml("other", port=3001))
    loaded = load([first, tmp_path, second])  # a.yaml named twice, b.yaml through its directory and by name
    assert [path for path, _ in loaded.files] == [first, second]
    assert names(loaded) == ["calls", "other"]
    assert loaded.services["default", "calls"].spec.listeners[0].udp.port == 2000
    assert loaded.errors == [f"{second}: VirtualService default/calls is already defined in {first}"]


def test_load_names_a_missing_file_and_a_fifo_for_what_they_are(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    loaded = load([tmp_path / "absent.yaml", fifo])  # a FIFO is refused without blocking on it
    assert loaded.errors == [
        f"{tmp_path / 'absent.yaml'}: no such file",
        f"{fifo}: not a regular file but a FIFO; skipped",
    ]
    assert read_file(tmp_path / "absent.yaml").errors == [
        f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"
    ]


def test_load_of_a_directory_reads_its_files_as_serve_does(tmp_path: Path) -> None:
    (tmp_path / "good.yml").write_text(vs_yaml("good"))
    os.mkfifo(tmp_path / "fifo.yaml")  # listed, then refused by name, as serve --dir does
    (tmp_path / "sub.yaml").mkdir()  # not a file at all
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text(vs_yaml("ignored"))
    loaded = load([tmp_path])
    assert [path.name for path, _ in loaded.files] == ["fifo.yaml", "good.yml"]
    assert names(loaded) == ["good"]
    assert loaded.errors == [f"{tmp_path / 'fifo.yaml'}: not a regular file but a FIFO; skipped"]


# -- the demo's plan: the control plane's cache decides -----------------------------------------


def test_the_demo_plans_the_listener_the_control_plane_serves_on_a_port_conflict(tmp_path: Path) -> None:
    # a-newer sorts first, but b-older is older: the control plane serves b-older's listener on port 2000.
    (tmp_path / "a.yaml").write_text(vs_yaml("a-newer", port=2000, endpoint_port=9001, created="2024-02-01T00:00:00Z"))
    (tmp_path / "b.yaml").write_text(vs_yaml("b-older", port=2000, endpoint_port=9002, created="2024-01-01T00:00:00Z"))
    plan = make_plan(tmp_path)
    assert [listener.name for listener in plan.listeners] == ["b-older-l"]
    assert [worker.port for worker in plan.workers] == [9002]
    assert (
        "a.yaml: VirtualService default/a-newer conflicts: UDP port 2000 is already used by the older "
        f"VirtualService default/b-older (in {tmp_path / 'b.yaml'}); the control plane leaves it out of the demo Envoy"
    ) in plan.warnings


def test_the_demo_leaves_out_a_cluster_declared_otherwise_under_the_same_name(tmp_path: Path) -> None:
    # Different ports and listener names: only the cluster's definitions differ (another endpoint).
    (tmp_path / "a.yaml").write_text(vs_yaml("first", port=2000, cluster="shared-c", endpoint_port=9001))
    (tmp_path / "b.yaml").write_text(vs_yaml("second", port=2001, cluster="shared-c", endpoint_port=9002))
    plan = make_plan(tmp_path)
    assert [listener.name for listener in plan.listeners] == ["first-l"]
    assert any(
        "default/second conflicts: cluster shared-c is already used with another definition" in warning
        for warning in plan.warnings
    )


def test_the_demo_shares_a_cluster_declared_alike_and_reports_a_name_defined_twice(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(vs_yaml("first", port=2000, cluster="shared-c"))
    (tmp_path / "b.yaml").write_text(
        vs_yaml("second", port=2001, cluster="shared-c") + "---\n" + vs_yaml("first", port=2002)
    )
    plan = make_plan(tmp_path)
    assert [(listener.name, listener.port) for listener in plan.listeners] == [("first-l", 2000), ("second-l", 2001)]
    assert (
        f"{tmp_path / 'b.yaml'}: VirtualService default/first is already defined in {tmp_path / 'a.yaml'} "
        "(the control plane skips it too)"
    ) in plan.warnings
