"""Assigned listener ports in directory mode (serve --dir --listener-ports): recorded in a state file beside the
directory, so a restart serves the same ports; a broken state file is an error in the log, not a crash; and
render / validate handle a listener without a port."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.support.ads_client import eventually
from xds_operator.api import parse_virtual_service
from xds_operator.app.wiring import build_directory_plane
from xds_operator.cli import main
from xds_operator.ports import state as state_module
from xds_operator.ports.assigner import PortRange, _Pool, _preferred
from xds_operator.ports.state import default_state_path
from xds_operator.xds.cache import SnapshotCache

RANGE = PortRange(22000, 22001)


def portless_yaml(name: str, protocol: str = "udp") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: servicemesh.l7mp.io/v1
        kind: VirtualService
        metadata: {{name: {name}, namespace: media}}
        spec:
          selector: {{app: envoy-ingress}}
          listeners:
          - name: {name}-l
            {protocol}:
              cluster:
                name: {name}-c
                endpoints: [{{name: w, host: {{address: 127.0.0.1}}, port: 9000}}]
        """
    )


def colliding_names() -> tuple[str, str]:
    """Two names, in name order, whose listeners start their search at the same port of RANGE."""
    pool = _Pool(RANGE)

    def start(name: str) -> int:
        document = yaml.safe_load(portless_yaml(name))
        return _preferred(parse_virtual_service(document), (f"{name}-l", "UDP"), pool)

    for first, second in itertools.combinations(sorted(f"call-{i}" for i in range(10)), 2):
        if start(first) == start(second):
            return first, second
    raise AssertionError("no two names collide")


def recorded(state: Path) -> dict[str, int]:
    """name → port, as a restart would read the record (JSON Lines: a header, then the latest line per name wins)."""
    found: dict[str, int] = {}
    lines = state.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 1
    for line in lines[1:]:
        entry = json.loads(line)
        found.pop(entry["name"], None)
        for listener in entry["listeners"]:
            found[entry["name"]] = listener["port"]
    return found


def served_ports(cache: SnapshotCache) -> dict[str, int]:
    ports = {}
    for key, vs in cache.virtual_services().items():
        block = vs.spec.listeners[0]
        ports[key[1]] = (block.udp if block.HasField("udp") else block.tcp).port
    return ports


def test_ports_are_recorded_beside_the_directory_and_kept_across_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "vs"
    directory.mkdir()
    state = default_state_path(directory)
    assert state.parent == tmp_path and not state.is_relative_to(directory)
    older, younger = colliding_names()
    (directory / f"{older}.yaml").write_text(portless_yaml(older))
    (directory / f"{younger}.yaml").write_text(portless_yaml(younger))
    plane = build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    before = served_ports(plane.cache)
    assert set(before.values()) == {22000, 22001}
    assert recorded(state) == before
    assert list(tmp_path.glob("*.tmp")) == []  # written atomically: no temporary file left

    (directory / f"{older}.yaml").unlink()  # gone while no control plane runs: a fresh start would move `younger`
    plane = build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    assert served_ports(plane.cache) == {younger: before[younger]}
    (directory / "call-new.yaml").write_text(portless_yaml("call-new"))
    plane.source.rescan()
    assert served_ports(plane.cache) == {younger: before[younger], "call-new": before[older]}


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99}', b"\xff\xfe", b'{"version": 1}\n7\n{"name": 1}'])
def test_a_broken_state_file_is_an_error_in_the_log_and_ports_are_assigned_anew(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    directory = tmp_path / "vs"
    directory.mkdir()
    (directory / "a.yaml").write_text(portless_yaml("a"))
    state = tmp_path / "state.json"
    state.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        plane = build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    assert served_ports(plane.cache)["a"] in RANGE
    assert str(state) in caplog.text
    assert recorded(state) == served_ports(plane.cache)  # replaced by a good record


def test_an_unwritable_state_file_is_logged_once_and_serving_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "vs"
    directory.mkdir()
    (directory / "a.yaml").write_text(portless_yaml("a"))
    state = tmp_path / "missing-directory" / "state.json"
    with caplog.at_level(logging.ERROR):
        plane = build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    assert served_ports(plane.cache)["a"] in RANGE
    assert (
        "cannot write the record of assigned listener ports" in caplog.text and "--listener-port-state" in caplog.text
    )


def test_without_listener_ports_a_listener_without_port_is_refused_naming_field_and_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a.yaml").write_text(portless_yaml("a"))
    (tmp_path / "b.yaml").write_text(portless_yaml("b").replace("udp:\n", "udp:\n      port: 2000\n"))
    with caplog.at_level(logging.ERROR):
        plane = build_directory_plane(tmp_path)
    assert served_ports(plane.cache) == {"b": 2000}
    assert "spec.listeners[0].udp.port" in caplog.text and "--listener-ports" in caplog.text
    assert plane.source.errors["invalid_document"] == 1


def test_a_full_range_is_logged_and_the_listener_served_once_a_port_is_freed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(portless_yaml(name))
    with caplog.at_level(logging.ERROR):
        plane = build_directory_plane(tmp_path, listener_ports=RANGE)
    served = served_ports(plane.cache)
    assert len(served) == 2
    [left_out] = {"a", "b", "c"} - set(served)
    assert f"VirtualService media/{left_out} is not served" in caplog.text and "22000-22001" in caplog.text
    assert plane.source.waiting.keys() == {("media", left_out)}
    scraped = plane.metrics.exposition().decode()
    assert 'xds_operator_listener_ports{protocol="UDP",state="waiting"} 1.0' in scraped
    assert 'xds_operator_listener_ports{protocol="UDP",state="free"} 0.0' in scraped
    gone = sorted(served)[0]
    (tmp_path / f"{gone}.yaml").unlink()
    plane.source.rescan()
    assert served_ports(plane.cache)[left_out] == served[gone]
    assert plane.source.waiting == {}


async def test_a_live_change_is_recorded_within_a_second_and_on_stopping(tmp_path: Path) -> None:
    directory = tmp_path / "vs"
    directory.mkdir()
    state = tmp_path / "state.json"
    plane = build_directory_plane(directory, listener_ports=PortRange(22000, 22099), port_state=state)
    watching = asyncio.create_task(plane.source.watch())
    try:

        def record() -> dict[str, int]:
            try:
                return recorded(state)
            except (OSError, ValueError):
                return {}

        await asyncio.sleep(0)
        (directory / "live.yaml").write_text(portless_yaml("live"))
        await eventually(lambda: "live" in served_ports(plane.cache), "the new file to be served")
        await eventually(lambda: record() == {"live": served_ports(plane.cache)["live"]}, "the port recorded")
        (directory / "live2.yaml").write_text(portless_yaml("live2", "tcp"))
        await eventually(lambda: "live2" in served_ports(plane.cache), "the second file to be served")
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await watching
    assert record() == served_ports(plane.cache)  # written on stopping, if it was not yet


def test_serve_refuses_a_state_file_inside_the_directory_or_in_kubernetes_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inside = str(tmp_path / "state.json")
    assert (
        main(["serve", "--dir", str(tmp_path), "--listener-ports", "20000-20010", "--listener-port-state", inside]) == 2
    )
    assert "must not be inside --dir" in capsys.readouterr().err
    assert main(["serve", "--listener-port-state", "/tmp/x.json"]) == 2
    assert "directory mode only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--dir", str(tmp_path), "--listener-ports", "20010-20000"])
    assert "--listener-ports" in capsys.readouterr().err


def test_validate_accepts_and_render_shows_the_port_serve_would_assign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(portless_yaml("a"))
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    assert main(["render", str(path), "--label", "app=envoy-ingress", "--listener-ports", "22000-22001"]) == 0
    captured = capsys.readouterr()
    [listener] = json.loads(captured.out)["LDS"]["resources"]
    port = listener["address"]["socket_address"]["port_value"]
    assert port in RANGE
    assert f"listener a-l names no port; shown with {port}" in captured.err
    assert "serve --listener-ports 22000-22001" in captured.err


def test_changes_are_appended_and_the_record_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "COMPACT_LINES", 4)
    directory = tmp_path / "vs"
    directory.mkdir()
    state = tmp_path / "state.json"
    (directory / "keep.yaml").write_text(portless_yaml("keep"))
    plane = build_directory_plane(directory, listener_ports=PortRange(22000, 22099), port_state=state)
    for round in range(20):  # a call comes and goes, again and again: each change appends a line
        (directory / "call.yaml").write_text(portless_yaml(f"call-{round}"))
        plane.source.rescan()
        plane.source.write_port_state()
        (directory / "call.yaml").unlink()
        plane.source.rescan()
        plane.source.write_port_state()
        assert recorded(state) == served_ports(plane.cache)
        assert len(state.read_text().splitlines()) <= 1 + 1 + 4 + 1  # header, keep, at most 4 appended, one more
    (directory / "late.yaml").write_text(portless_yaml("late"))
    plane.source.rescan()
    plane.source.write_port_state()
    before = served_ports(plane.cache)
    assert build_directory_plane(directory, listener_ports=PortRange(22000, 22099), port_state=state).cache
    assert (
        served_ports(build_directory_plane(directory, listener_ports=PortRange(22000, 22099), port_state=state).cache)
        == before
    )


def test_records_of_virtual_services_gone_at_startup_are_forgotten(tmp_path: Path) -> None:
    # Otherwise a later file of that name would claim its old port back from whoever holds it by then.
    directory = tmp_path / "vs"
    directory.mkdir()
    state = tmp_path / "state.json"
    for name in ("a", "b"):
        (directory / f"{name}.yaml").write_text(portless_yaml(name))
    build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    (directory / "a.yaml").unlink()
    plane = build_directory_plane(directory, listener_ports=RANGE, port_state=state)
    assert recorded(state) == served_ports(plane.cache) and set(recorded(state)) == {"b"}


def test_without_listener_ports_an_edit_that_drops_the_port_keeps_the_last_valid_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(portless_yaml("a").replace("udp:\n", "udp:\n      port: 2000\n"))
    plane = build_directory_plane(tmp_path)
    path.write_text(portless_yaml("a") + "\n")
    with caplog.at_level(logging.ERROR):
        plane.source.rescan()
    assert served_ports(plane.cache) == {"a": 2000}
    assert "keeping its last valid version" in caplog.text and "--listener-ports" in caplog.text
