"""The directory source: reading VirtualService files, reporting bad ones, and live reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support.ads_client import eventually
from xds_operator.sources.directory import DirectorySource
from xds_operator.sources.loader import FileContents, read_file
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import LISTENER

INGRESS = {"app": "envoy-ingress"}


def vs_yaml(name: str, *, port: int = 2000, listener: str | None = None, namespace: str = "default") -> str:
    """One VirtualService document as YAML (no leading ---)."""
    return textwrap.dedent(
        f"""\
        apiVersion: servicemesh.l7mp.io/v1
        kind: VirtualService
        metadata:
          name: {name}
          namespace: {namespace}
        spec:
          selector:
            app: envoy-ingress
          listeners:
          - name: {listener or name + "-l"}
            udp:
              port: {port}
              cluster:
                name: {name}-c
                endpoints:
                - name: w
                  host:
                    address: 127.0.0.1
                  port: 9000
        """
    )


def write(path: Path, text: str) -> Path:
    """Write a file and make sure its modification stamp differs from any earlier version."""
    old = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(text)
    if old is not None and path.stat().st_mtime_ns == old:
        os.utime(path, ns=(old + 1_000_000, old + 1_000_000))
    return path


def ports(cache: SnapshotCache) -> dict[str, int]:
    """name → listener port of every VirtualService the cache holds."""
    return {key[1]: vs.spec.listeners[0].udp.port for key, vs in cache.virtual_services().items()}


def source(directory: Path) -> tuple[DirectorySource, SnapshotCache]:
    cache = SnapshotCache()
    src = DirectorySource(directory, cache)
    src.load()
    return src, cache


# -- read_file ------------------------------------------------------------------------------


def test_multi_document_file(tmp_path: Path) -> None:
    path = write(tmp_path / "many.yaml", "---\n" + vs_yaml("one") + "---\n" + vs_yaml("two", port=2001) + "---\n")
    contents = read_file(path)
    assert contents.errors == []
    assert [(vs.name, vs.origin) for vs in contents.services] == [("one", str(path)), ("two", str(path))]


def read_in_a_thread(path: Path) -> FileContents:
    """read_file(path), failing (not hanging) if it blocks."""
    result: list[FileContents] = []
    reader = threading.Thread(target=lambda: result.append(read_file(path)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():
        with open(path, "wb"):  # a writer unblocks the reader left behind (a FIFO's open waits for one)
            pass
        pytest.fail(f"read_file({path}) blocked")
    return result[0]


@pytest.mark.parametrize("through_a_symlink", [False, True])
def test_a_fifo_is_refused_by_name_without_blocking(tmp_path: Path, through_a_symlink: bool) -> None:
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)
    path = tmp_path / "calls.yaml"
    path.symlink_to(fifo.name) if through_a_symlink else os.replace(fifo, path)
    contents = read_in_a_thread(path)
    assert contents.unreadable and contents.errors == [f"{path}: not a regular file but a FIFO; skipped"]


def test_a_fifo_swapped_in_under_a_served_name_keeps_the_last_valid_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "calls.yaml", vs_yaml("calls"))
    src, cache = source(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    os.replace(tmp_path / "fifo", path)
    rescan = threading.Thread(target=src.rescan, daemon=True)
    with caplog.at_level(logging.ERROR, logger="xds_operator.sources.directory"):
        rescan.start()
        rescan.join(timeout=10)
    assert not rescan.is_alive(), "the rescan blocked on the FIFO"
    assert ports(cache) == {"calls": 2000}
    assert f"{path}: not a regular file but a FIFO; skipped" in caplog.text
    assert src.errors["unreadable_file"] == 1


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "apiVersion: v1\nspec:\n  listeners: [1,\n  selector: {a: b}\n: :\n")
    contents = read_file(path)
    assert contents.services == [] and contents.unreadable
    [message] = contents.errors
    assert message.startswith(f"{path}: invalid YAML: line ")
    assert "the whole file is skipped" in message


def test_invalid_yaml_line_number_is_right(tmp_path: Path) -> None:
    path = write(tmp_path / "tab.yaml", "a: 1\nb: 2\nc: [unclosed\n")
    [message] = read_file(path).errors
    assert "line 4" in message  # the stream ends (line 4) before the list is closed


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(vs_yaml("calls").replace("w\n", "w\xe9\n").encode("latin-1"))
    contents = read_file(path)
    assert contents.services == [] and contents.unreadable
    [message] = contents.errors
    assert message.startswith(f"{path}: not UTF-8 text")


@pytest.mark.parametrize(("text", "described"), [("- 1\n- 2\n", "a list"), ("just text\n", "a string")])
def test_document_that_is_not_a_mapping(tmp_path: Path, text: str, described: str) -> None:
    path = write(tmp_path / "odd.yaml", vs_yaml("calls") + "---\n" + text)
    contents = read_file(path)
    assert [vs.name for vs in contents.services] == ["calls"]
    assert contents.errors == [f"{path}: document 2: (document): expected a mapping, got {described}"]


def test_other_kinds_are_skipped_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(
        tmp_path / "kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [vs.yaml]\n",
    )
    write(tmp_path / "mixed.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n" + vs_yaml("calls"))
    assert read_file(tmp_path / "kustomization.yaml").errors == []
    with caplog.at_level(logging.WARNING):
        _, cache = source(tmp_path)
    assert ports(cache) == {"calls": 2000}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_invalid_document_is_reported_and_the_valid_ones_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "vs.yaml",
        vs_yaml("good") + "---\n" + vs_yaml("broken", port=0) + "---\n" + vs_yaml("also-good", port=2001),
    )
    contents = read_file(path)
    assert contents.errors == [
        f"{path}: document 2 (default/broken): spec.listeners[0].udp.port: must be at least 1, got 0"
    ]
    with caplog.at_level(logging.ERROR, logger="xds_operator.sources.directory"):
        _, cache = source(tmp_path)
    assert ports(cache) == {"good": 2000, "also-good": 2001}
    assert any("document 2 (default/broken): spec.listeners[0].udp.port" in r.getMessage() for r in caplog.records)
    assert {"good-l", "also-good-l"} == set(cache.snapshot_for(INGRESS).resources[LISTENER])


def test_same_name_in_two_files_keeps_the_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", vs_yaml("calls", port=2000))
    write(tmp_path / "b.yaml", vs_yaml("calls", port=3000))
    with caplog.at_level(logging.ERROR, logger="xds_operator.sources.directory"):
        _, cache = source(tmp_path)
    assert ports(cache) == {"calls": 2000}
    assert cache.virtual_services()[("default", "calls")].origin == str(tmp_path / "a.yaml")
    assert any("already defined" in r.getMessage() and "b.yaml" in r.getMessage() for r in caplog.records)


def test_the_next_file_defining_a_name_takes_over_when_the_first_goes(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", vs_yaml("calls", port=2000))
    write(tmp_path / "b.yaml", vs_yaml("calls", port=3000))
    write(tmp_path / "c.yaml", vs_yaml("other", port=4000))
    src, cache = source(tmp_path)
    (tmp_path / "a.yaml").unlink()
    src.rescan()
    assert ports(cache) == {"calls": 3000, "other": 4000}
    write(tmp_path / "a.yaml", vs_yaml("calls", port=2000))
    src.rescan()
    assert ports(cache) == {"calls": 2000, "other": 4000}
    (tmp_path / "b.yaml").unlink()
    (tmp_path / "a.yaml").unlink()
    src.rescan()
    assert ports(cache) == {"other": 4000}


def test_same_name_in_another_namespace_is_a_different_service(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", vs_yaml("calls", port=2000))
    write(tmp_path / "b.yaml", vs_yaml("calls", port=3000, namespace="media"))
    _, cache = source(tmp_path)
    assert set(cache.virtual_services()) == {("default", "calls"), ("media", "calls")}


# -- DirectorySource: edits, deletions, rescans ---------------------------------------------


def test_edit_into_invalid_keeps_the_last_valid_version(tmp_path: Path) -> None:
    path = write(tmp_path / "vs.yaml", vs_yaml("calls", port=2000) + "---\n" + vs_yaml("other", port=2001))
    src, cache = source(tmp_path)

    write(path, vs_yaml("calls", port=0) + "---\n" + vs_yaml("other", port=2002))  # calls invalid, other edited
    src.rescan()
    assert ports(cache) == {"calls": 2000, "other": 2002}

    write(path, "spec: [unclosed\n")  # the whole file unreadable
    src.rescan()
    assert ports(cache) == {"calls": 2000, "other": 2002}

    write(path, vs_yaml("calls", port=2100))  # fixed; other removed on purpose
    src.rescan()
    assert ports(cache) == {"calls": 2100}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda text: text.replace("kind: VirtualService", "kind: VirtualServic"), "kind: must be 'VirtualService'"),
        (lambda text: text.replace("kind: VirtualService", "kind: virtualservices"), "kind: must be"),
        (lambda text: text.replace("kind: VirtualService", "kind: Gateway"), "kind: must be"),  # our API group
        (lambda text: text.replace("metadata:", "metdata:"), "metdata: unknown field"),
        (lambda text: text.replace("  name: calls\n", "  nme: calls\n"), "metadata.nme: unknown field"),
        (lambda text: textwrap.indent(text, "  ").replace("  apiVersion", "- apiVersion", 1), "expected a mapping"),
    ],
    ids=["kind-typo", "kind-plural", "kind-of-the-group", "metadata-typo", "name-typo", "top-level-list"],
)
def test_a_document_that_stops_being_a_virtual_service_keeps_the_last_valid_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, edit, problem: str
) -> None:
    """An invalid edit is not a deletion, even when it leaves the document without a kind or a name."""
    path = write(tmp_path / "vs.yaml", vs_yaml("calls", port=2000) + "---\n" + vs_yaml("other", port=2001))
    src, cache = source(tmp_path)
    with caplog.at_level(logging.ERROR, logger="xds_operator.sources.directory"):
        write(path, edit(vs_yaml("calls", port=2000)) + "---\n" + vs_yaml("other", port=2002))
        src.rescan()
    assert ports(cache) == {"calls": 2000, "other": 2002}
    assert src.errors["invalid_document"] == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(error.startswith(f"{path}: document 1") for error in errors)
    assert any(problem in error for error in errors), errors

    write(path, vs_yaml("other", port=2002))  # the document removed on purpose: now it goes
    src.rescan()
    assert ports(cache) == {"other": 2002}


def test_a_virtual_service_replaced_by_a_document_of_another_kind_is_deleted(tmp_path: Path) -> None:
    path = write(tmp_path / "vs.yaml", vs_yaml("calls"))
    src, cache = source(tmp_path)
    write(path, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: calls}\n")
    src.rescan()
    assert ports(cache) == {}
    assert src.errors["invalid_document"] == 0


def test_deleting_a_file_removes_its_services(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", vs_yaml("a"))
    doomed = write(tmp_path / "b.yml", vs_yaml("b", port=2001) + "---\n" + vs_yaml("c", port=2002))
    src, cache = source(tmp_path)
    assert set(ports(cache)) == {"a", "b", "c"}
    doomed.unlink()
    src.rescan()
    assert ports(cache) == {"a": 2000}
    assert set(cache.snapshot_for(INGRESS).resources[LISTENER]) == {"a-l"}


def test_other_suffixes_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", vs_yaml("a"))
    write(tmp_path / "notes.txt", vs_yaml("b", port=2001))
    write(tmp_path / "a.yaml.bak", vs_yaml("c", port=2002))
    _, cache = source(tmp_path)
    assert set(ports(cache)) == {"a"}


def test_rescan_reads_only_changed_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "a.yaml", vs_yaml("a", port=2000))
    b = write(tmp_path / "b.yaml", vs_yaml("b", port=3000))
    src, cache = source(tmp_path)

    write(b, vs_yaml("b", port=3001))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xds_operator.sources.directory"):
        src.rescan()
    assert ports(cache) == {"a": 2000, "b": 3001}
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert loaded == ["loaded b.yaml: 1 VirtualService(s), 0 problem(s)"]  # a.yaml was not read again

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xds_operator.sources.directory"):
        src.rescan()  # nothing changed: nothing read
    assert [r for r in caplog.records if r.getMessage().startswith("loaded ")] == []


def test_rescan_reads_a_new_version_with_the_old_size_and_modification_time(tmp_path: Path) -> None:
    """`rsync -a` and `cp -p` rename in a new file with the old one's mtime: the inode and ctime tell."""
    a = write(tmp_path / "a.yaml", vs_yaml("a", port=2000))
    b = write(tmp_path / "b.yaml", vs_yaml("b", port=3000))
    src, cache = source(tmp_path)

    for path, text in ((a, vs_yaml("a", port=2001)), (b, vs_yaml("b", port=3001))):
        stamp = path.stat()
        new = path.with_suffix(".new")
        new.write_text(text)
        os.utime(new, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        assert new.stat().st_size == stamp.st_size
        if path == a:
            os.replace(new, path)  # renamed in: another inode
        else:
            path.write_text(text)  # rewritten in place, then the mtime put back: the ctime changed
            os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            new.unlink()
    src.rescan()
    assert ports(cache) == {"a": 2001, "b": 3001}


def test_a_conflict_without_timestamps_has_the_same_winner_whatever_the_load_order(tmp_path: Path) -> None:
    """Without creationTimestamp, namespace/name decide: a restart (everything loaded at once) keeps the winner."""
    b = write(tmp_path / "b.yaml", vs_yaml("b", listener="shared-l", port=2000))
    src, cache = source(tmp_path)
    cache.watch(INGRESS, lambda: None)
    write(tmp_path / "a.yaml", vs_yaml("a", listener="shared-l", port=2001))  # added later, still first by name
    src.rescan()
    assert set(cache.conflicts) == {("default", "b")}
    write(b, vs_yaml("b", listener="shared-l", port=2002))
    src.rescan()
    assert set(cache.conflicts) == {("default", "b")}

    _, restarted = source(tmp_path)
    restarted.watch(INGRESS, lambda: None)
    assert set(restarted.conflicts) == {("default", "b")}


def test_load_requires_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DirectorySource(tmp_path / "missing", SnapshotCache()).load()


async def test_watch_picks_up_a_new_file_live(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", vs_yaml("a"))
    src, cache = source(tmp_path)
    task = asyncio.create_task(src.watch())
    try:
        write(tmp_path / "b.yaml", vs_yaml("b", port=2001))
        await eventually(lambda: ("default", "b") in cache.virtual_services(), "b.yaml to be read")
        assert ports(cache) == {"a": 2000, "b": 2001}
        assert set(cache.snapshot_for(INGRESS).resources[LISTENER]) == {"a-l", "b-l"}

        (tmp_path / "a.yaml").unlink()
        await eventually(lambda: ("default", "a") not in cache.virtual_services(), "a.yaml to be forgotten")
        assert ports(cache) == {"b": 2001}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_applies_files_renamed_into_place_and_ignores_the_temporary_ones(tmp_path: Path) -> None:
    """How applications write a file per call atomically: a temporary name, then a rename."""
    write(tmp_path / "a.yaml", vs_yaml("a"))
    src, cache = source(tmp_path)
    task = asyncio.create_task(src.watch())
    try:
        for index in range(5):
            temporary = write(tmp_path / f".call-{index}.tmp", vs_yaml(f"call-{index}", port=3000 + index))
            os.replace(temporary, tmp_path / f"call-{index}.yaml")
        write(tmp_path / ".left-behind.tmp", vs_yaml("left-behind", port=3999))
        await eventually(lambda: len(cache.virtual_services()) == 6, "the renamed files to be read")
        (tmp_path / "call-2.yaml").unlink()
        await eventually(lambda: ("default", "call-2") not in cache.virtual_services(), "call-2 to be removed")
        assert ports(cache) == {"a": 2000, "call-0": 3000, "call-1": 3001, "call-3": 3003, "call-4": 3004}
        assert set(cache.snapshot_for(INGRESS).resources[LISTENER]) == {"a-l", *(f"call-{i}-l" for i in (0, 1, 3, 4))}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_follows_a_configmap_volume_swapping_its_data_symlink(tmp_path: Path) -> None:
    """Kubernetes updates a mounted ConfigMap by pointing `..data` at a new directory: the files are symlinks."""
    first = tmp_path / "..2026_01_01_v1"
    first.mkdir()
    write(first / "calls.yaml", vs_yaml("calls", port=2000))
    (tmp_path / "..data").symlink_to(first.name)
    (tmp_path / "calls.yaml").symlink_to("..data/calls.yaml")
    src, cache = source(tmp_path)
    task = asyncio.create_task(src.watch())
    try:
        assert ports(cache) == {"calls": 2000}
        second = tmp_path / "..2026_01_01_v2"
        second.mkdir()
        write(second / "calls.yaml", vs_yaml("calls", port=2010))
        (tmp_path / "..data_tmp").symlink_to(second.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # what the kubelet does
        await eventually(lambda: ports(cache) == {"calls": 2010}, "the swapped ..data to be read")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_applies_a_burst_of_new_files_at_once(tmp_path: Path) -> None:
    src, cache = source(tmp_path)
    snapshots: list[int] = []
    cache.watch(INGRESS, lambda: snapshots.append(1))  # called once per new snapshot of the group
    task = asyncio.create_task(src.watch())
    try:
        await asyncio.sleep(0)  # the task's first step places the watches (synchronously), then waits
        snapshots.clear()
        for index in range(20):  # like `cp *.yaml dir/`: 20 files written back to back
            write(tmp_path / f"vs-{index}.yaml", vs_yaml(f"vs-{index}", port=3000 + index))
        await eventually(lambda: len(cache.virtual_services()) == 20, "all 20 files to be read")
        assert len(snapshots) == 1  # one snapshot for the burst, not one per file
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the watch: changes made by links, permissions, a switched or recreated directory ---------------


@contextlib.asynccontextmanager
async def watching(src: DirectorySource):
    task = asyncio.create_task(src.watch())
    await asyncio.sleep(0)  # the task's first step places the watches (synchronously), then waits
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_sees_files_linked_in_with_ln_and_ln_s(tmp_path: Path) -> None:
    directory, elsewhere = tmp_path / "vs", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    src, cache = source(directory)
    async with watching(src):
        (directory / "soft.yaml").symlink_to(write(elsewhere / "soft.yaml", vs_yaml("soft", port=2001)))
        os.link(write(elsewhere / "hard.yaml", vs_yaml("hard", port=2002)), directory / "hard.yaml")
        await eventually(lambda: ports(cache) == {"soft": 2001, "hard": 2002}, "the linked files to be read")


async def test_watch_follows_what_a_symlink_points_to(tmp_path: Path) -> None:
    """An edit of the target, wherever it is, and a link pointed elsewhere (removed and made again)."""
    directory, elsewhere = tmp_path / "vs", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    link = directory / "calls.yaml"
    link.symlink_to(write(elsewhere / "v1.yaml", vs_yaml("calls", port=2000)))
    (directory / "local.yaml").symlink_to("local.txt")  # a target in the directory itself, not a YAML name
    write(directory / "local.txt", vs_yaml("local", port=3000))
    src, cache = source(directory)
    async with watching(src):
        write(elsewhere / "v1.yaml", vs_yaml("calls", port=2001))
        write(directory / "local.txt", vs_yaml("local", port=3001))
        await eventually(lambda: ports(cache) == {"calls": 2001, "local": 3001}, "the targets' edits to be read")
        write(elsewhere / "v2.yaml", vs_yaml("calls", port=2002))
        link.unlink()
        link.symlink_to(elsewhere / "v2.yaml")
        await eventually(lambda: ports(cache)["calls"] == 2002, "the link's new target to be read")
        write(elsewhere / "v1.yaml", vs_yaml("calls", port=2003))  # the old target: nothing to do with it now
        write(elsewhere / "v2.yaml", vs_yaml("calls", port=2004))
        await eventually(lambda: ports(cache)["calls"] == 2004, "the new target's edit to be read")


async def test_watch_reads_a_file_again_when_its_permissions_change(tmp_path: Path) -> None:
    """A file made readable by chmod is read. (Its content is changed through a hard link elsewhere, which
    gives no event here, so that the test means something when run as root, who reads any file.)"""
    directory = tmp_path / "vs"
    directory.mkdir()
    path = write(directory / "calls.yaml", vs_yaml("calls", port=2000))
    os.link(path, tmp_path / "other-name")
    src, cache = source(directory)
    async with watching(src):
        path.chmod(0)
        await asyncio.sleep(0.1)
        with open(tmp_path / "other-name", "w") as stream:
            stream.write(vs_yaml("calls", port=2001))
        path.chmod(0o644)
        await eventually(lambda: ports(cache) == {"calls": 2001}, "the file to be read after chmod")


async def test_watch_follows_a_directory_symlink_switched_like_git_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for version, port in (("v1", 2000), ("v2", 2010)):
        (tmp_path / version).mkdir()
        write(tmp_path / version / "calls.yaml", vs_yaml("calls", port=port))
    write(tmp_path / "v2" / "more.yaml", vs_yaml("more", port=2011))
    current = tmp_path / "current"
    current.symlink_to("v1")
    src, cache = source(current)
    async with watching(src) as task:
        (tmp_path / "current.tmp").symlink_to("v2")
        os.replace(tmp_path / "current.tmp", current)  # what git-sync does
        await eventually(lambda: ports(cache) == {"calls": 2010, "more": 2011}, "the switched link to be read")
        shutil.rmtree(tmp_path / "v1")  # the old checkout goes
        write(current / "more.yaml", vs_yaml("more", port=2012))
        await eventually(lambda: ports(cache) == {"calls": 2010, "more": 2012}, "an edit in the new target")
        assert not task.done()


async def test_watch_waits_for_a_deleted_directory_to_come_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "vs"
    directory.mkdir()
    write(directory / "calls.yaml", vs_yaml("calls", port=2000))
    src, cache = source(directory)
    with caplog.at_level(logging.WARNING, logger="xds_operator.sources.directory"):
        async with watching(src) as task:
            shutil.rmtree(directory)
            await eventually(lambda: f"{directory} is gone" in caplog.text, "the removal to be noticed")
            directory.mkdir()
            write(directory / "calls.yaml", vs_yaml("calls", port=2001))
            await eventually(lambda: ports(cache) == {"calls": 2001}, "the directory made again to be read")
            write(directory / "calls.yaml", vs_yaml("calls", port=2002))
            await eventually(lambda: ports(cache) == {"calls": 2002}, "an edit in it to be seen")
            assert not task.done()
