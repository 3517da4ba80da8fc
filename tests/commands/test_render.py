"""`xds-operator render`: the Envoy resources VirtualService files give a proxy with given labels, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import udp_proxy_pb2
from google.protobuf import any_pb2, json_format

from tests.support.cli import SAMPLES, run
from tests.support.vs import listener_spec, vs_document
from xds_operator.sources.loader import read_file
from xds_operator.translate import translate_virtual_service

LABELS = ["--label", "app=ingress", "--label", "zone=a"]


def write(path: Path, *documents: dict) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def unpack(resource: dict, message_class):
    message = message_class()
    assert json_format.ParseDict(resource, any_pb2.Any()).Unpack(message)
    return message


def test_render_prints_what_translation_gives_the_selected_proxy(tmp_path: Path, capsys) -> None:
    calls = write(
        tmp_path / "calls.yaml",
        vs_document("calls", [listener_spec("rtp-l", 2000, "rtp-c", eds=True, hash_key="callid")]),
        vs_document("other", [listener_spec("x-l", 2001, "x-c")], selector={"app": "elsewhere"}),
    )
    status, out, err = run(["render", str(calls), *LABELS], capsys)
    assert status == 0, err
    rendered = json.loads(out)
    assert set(rendered) == {"CDS", "EDS", "LDS"}
    # Only what the proxy's labels select, each resource equal to the translation's own message.
    (expected,) = [vs for vs in read_file(calls).services if vs.name == "calls"]
    envoy = translate_virtual_service(expected)
    (listener,) = rendered["LDS"]["resources"]
    (cluster,) = rendered["CDS"]["resources"]
    (assignment,) = rendered["EDS"]["resources"]
    assert unpack(listener, listener_pb2.Listener) == envoy.listeners[0]
    assert unpack(cluster, cluster_pb2.Cluster) == envoy.clusters[0]
    assert assignment["cluster_name"] == "rtp-c" and assignment["@type"].endswith("ClusterLoadAssignment")
    udp = unpack(listener["listener_filters"][0]["typed_config"], udp_proxy_pb2.UdpProxyConfig)
    assert [policy.key for policy in udp.hash_policies] == ["callid"]
    assert listener["address"]["socket_address"]["port_value"] == 2000  # proto field names, as Envoy shows them
    assert all(len(rendered[kind]["version"]) == 16 for kind in rendered)

    # YAML is the same document; a directory stands for its files.
    status, out, _ = run(["render", str(tmp_path), *LABELS, "--output", "yaml"], capsys)
    assert status == 0 and yaml.safe_load(out) == rendered


def test_render_for_labels_nothing_selects_is_empty_and_says_which_selectors_exist(tmp_path: Path, capsys) -> None:
    status, out, err = run(["render", str(SAMPLES[0]), "--label", "app=nothing-selects-this"], capsys)
    assert status == 0
    assert {kind: entry["resources"] for kind, entry in json.loads(out).items()} == {"CDS": [], "EDS": [], "LDS": []}
    assert "no VirtualService selects a proxy with app=nothing-selects-this, so it gets nothing" in err
    assert "The selectors in these files: app=envoy-ingress" in err


def test_render_without_labels_says_nothing_matched(tmp_path: Path, capsys) -> None:
    # It printed empty lists and nothing else: a new user could not tell why.
    write(
        tmp_path / "two.yaml",
        vs_document("a", [listener_spec("a-l", 2000, "a-c")], selector={"app": "ingress"}),
        vs_document("b", [listener_spec("b-l", 3000, "b-c")], selector={"app": "edge", "zone": "a"}),
    )
    status, _, err = run(["render", str(tmp_path)], capsys)
    assert status == 0
    assert (
        "no VirtualService selects a proxy with no labels, so it gets nothing; give its labels with --label KEY=VALUE. "
        "The selectors in these files: app=edge,zone=a; app=ingress"
    ) in err


def test_render_of_what_the_labels_select_says_nothing_more(capsys) -> None:
    status, _, err = run(["render", str(SAMPLES[0]), "--label", "app=envoy-ingress"], capsys)
    assert status == 0 and "no VirtualService selects" not in err


def test_render_reports_invalid_files_like_validate_and_fails(tmp_path: Path, capsys) -> None:
    good = write(tmp_path / "good.yaml", vs_document("good", [listener_spec("a-l", 2000, "a-c")]))
    bad = write(tmp_path / "bad.yaml", vs_document("bad", [listener_spec("b-l", 70000, "b-c")]))
    status, out, err = run(["render", str(good), str(bad), str(tmp_path / "absent.yaml"), *LABELS], capsys)
    assert status == 1 and out == ""
    assert f"{bad}: document 1 (media/bad): spec.listeners[0].udp.port: must be at most 65535, got 70000" in err
    assert f"{tmp_path / 'absent.yaml'}: no such file" in err
    assert "2 problem(s); nothing rendered" in err


def test_render_leaves_out_a_conflicting_virtualservice_and_says_so(
    tmp_path: Path, capsys, caplog: pytest.LogCaptureFixture
) -> None:
    write(
        tmp_path / "both.yaml",
        vs_document("older", [listener_spec("a-l", 2000, "a-c")], created="2024-01-01T00:00:00Z"),
        vs_document("newer", [listener_spec("b-l", 2000, "b-c")], created="2024-02-01T00:00:00Z"),
    )
    status, out, _ = run(["render", str(tmp_path), *LABELS], capsys)
    assert status == 0
    assert [r["name"] for r in json.loads(out)["LDS"]["resources"]] == ["a-l"]
    assert any(
        "media/newer conflicts: UDP port 2000 is already used by the older VirtualService media/older" in r.getMessage()
        for r in caplog.records
    )
