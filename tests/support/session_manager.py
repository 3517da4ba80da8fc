"""The session manager example (examples/session_manager.py) as a subprocess, for the e2e tests."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.e2e import register_log
from tests.support.e2e_kube import NS
from tests.support.fake_apiserver import FakeApiServer
from tests.support.paths import REPO

EXAMPLE = REPO / "examples" / "session_manager.py"


class SessionManager:
    """The example program as a subprocess: stdout lines collected by a thread, stdin held open."""

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path, apiserver: FakeApiServer, *args: str):
        kubeconfig = apiserver.kubeconfig(tmp_path / "session-manager-kubeconfig")
        self.stderr_path = tmp_path / "session-manager.err"
        register_log(request, "session manager stderr", self.stderr_path)
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args, "--namespace", NS, "--kubeconfig", str(kubeconfig)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def printed(self) -> list[str]:
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get_nowait())
        return lines

    def next_line(self, timeout: float = 30) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the session manager printed nothing within {timeout:.0f}s:\n{self.stderr_path.read_text()}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def end_session(self) -> int:
        """Close its stdin: the session ends."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
