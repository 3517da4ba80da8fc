"""`make run` end to end: the demo starts the control plane, a real Envoy and the echo workers
from the samples, prints a command that gets an answer from a worker, and stops cleanly on Ctrl-C.

The tests run the samples copied with their ports (listener 2000, workers 9001/9002, health
9101/9102) replaced by free ones, as are the control plane's and Envoy's admin/xDS ports: two demos,
or a demo and anything else, can run at once (pytest-xdist).
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO
from tests.support.ports import free_port, free_tcp_ports, free_udp_port

ROOT = REPO
SAMPLES = ROOT / "config" / "samples"
WORKERS = {"worker-a", "worker-b"}  # the endpoints of config/samples/ingress-calls.yaml
BANNER_TIMEOUT = 60.0


def samples_on_free_ports(target: Path) -> Path:
    """config/samples copied to `target`, every port in its VirtualServices replaced by a free one."""
    shutil.copytree(SAMPLES, target)
    for path in target.glob("*.yaml"):
        documents = list(yaml.safe_load_all(path.read_text()))
        for document in documents:
            if document.get("kind") != "VirtualService":
                continue
            for listener in document["spec"]["listeners"]:
                udp = listener["udp"]
                udp["port"] = free_udp_port()
                for endpoint in udp["cluster"]["endpoints"]:
                    endpoint["port"] = free_udp_port()
                    if "health_check_port" in endpoint:
                        endpoint["health_check_port"] = free_port()
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return target


class Output:
    """Collects a child's combined output in a thread, so waiting for a line has a deadline."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} within {timeout:.0f} s; output so far:\n{self.text}")
            if line is None:
                pytest.fail(f"the demo exited before printing {text!r}; output:\n{self.text}")
            self.lines.append(line)
            if text in line:
                return

    def finish(self, timeout: float) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start_demo(directory: Path, *extra: str) -> subprocess.Popen:
    xds, admin, envoy_admin = free_tcp_ports(3)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xds_operator.demo",
            "run",
            "--dir",
            str(directory),
            "--xds-port",
            str(xds),
            "--admin-port",
            str(admin),
            "--envoy-admin-port",
            str(envoy_admin),
            *extra,
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(process: subprocess.Popen) -> None:
    """Safety net when a test fails half way: never leave a demo (and its Envoy) running."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_run_prints_a_working_send_command_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    samples = samples_on_free_ports(tmp_path / "samples")
    demo = start_demo(samples)
    try:
        output = Output(demo)
        output.wait_for("Press Ctrl-C", BANNER_TIMEOUT)
        banner = output.text

        commands = [line.strip() for line in banner.splitlines() if " -m xds_operator.demo send " in line]
        assert len(commands) == 1, f"expected one send command in the banner:\n{banner}"
        argv = shlex.split(commands[0])
        message = argv[-1]
        sent = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
        answer = sent.stdout.strip()
        assert sent.returncode == 0, f"{commands[0]!r} failed: {sent.stdout}{sent.stderr}\ndemo:\n{banner}"
        name, _, payload = answer.partition(": ")
        assert name in WORKERS and payload == message, f"{commands[0]!r} printed {answer!r}"

        pids = {name: int(match) for name, match in re.findall(r"^\s*(control plane|envoy)\s+pid (\d+)", banner, re.M)}
        assert set(pids) == {"control plane", "envoy"}, banner

        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not stop within 10 s of SIGINT; output:\n{output.text}")
        text = output.finish(5)
        assert code == 0, text
        assert "Traceback" not in text, text
        assert all(gone(pid) for pid in pids.values()), f"left running: {pids}\n{text}"
    finally:
        stop(demo)


def test_run_names_a_port_that_is_taken_and_exits_non_zero(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    envoy_admin = free_port()
    samples = samples_on_free_ports(tmp_path / "samples")
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "xds_operator.demo",
                "run",
                "--dir",
                str(samples),
                "--xds-port",
                str(taken),
                "--envoy-admin-port",
                str(envoy_admin),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        holder.close()
    assert result.returncode == 1
    assert f"port {taken}/tcp" in result.stderr and "--xds-port" in result.stderr, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_send_without_a_listener_says_no_answer(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "xds_operator.demo", "send", f"127.0.0.1:{port}", "hi", "--count", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.stdout.splitlines() == ["no answer within 1 s"] * 2
    assert result.returncode == 1


def test_the_demo_plan_skips_tcp_listeners_with_a_warning(tmp_path: Path) -> None:
    """The demo drives UDP: a TCP listener in the directory is named in a warning, not a crash."""
    from xds_operator.demo.main import make_plan

    shutil.copy(SAMPLES / "ingress-calls.yaml", tmp_path / "ingress-calls.yaml")
    (tmp_path / "signaling.yaml").write_text(
        "apiVersion: servicemesh.l7mp.io/v1\nkind: VirtualService\nmetadata: {name: signaling}\n"
        "spec:\n  selector: {app: envoy-ingress}\n  listeners:\n  - name: sip-l\n    tcp:\n      port: 5060\n"
        "      cluster: {name: sip-c, endpoints: [{name: w, host: {address: 127.0.0.1}, port: 5070}]}\n"
    )
    plan = make_plan(tmp_path)
    assert [listener.name for listener in plan.listeners] == ["ingress-rtp-l"]
    assert any("sip-l is a TCP listener" in warning for warning in plan.warnings)
