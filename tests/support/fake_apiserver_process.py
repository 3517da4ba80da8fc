"""The fake API server (tests/support/fake_apiserver.py) in a process of its own.

A benchmark that puts the control plane under load must not count the fake's CPU as the control
plane's, nor let the fake's threads compete with its own for one interpreter lock: this runs the
unmodified ``FakeApiServer`` in a child process (``python -m tests.support.fake_apiserver_process``) and
drives it over the child's stdin/stdout, one JSON object per line:

    {"op": "put", "objects": [...]}      → {"stored": N}   (direct store access: watch events, no HTTP)
    {"op": "requests", "since": I}       → {"requests": [[method, path, query, user_agent], ...], "total": N}
    {"op": "errors"}                     → {"errors": [traceback, ...]}

The child prints ``{"url": ..., "token": ...}`` first and stops when its stdin closes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import kubernetes.client

from tests.support.fake_apiserver import FakeApiServer, RecordedRequest, api_client, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]  # the child imports tests.support from here


class FakeApiServerProcess:
    """A ``FakeApiServer`` in a child process: its URL, pid (for /proc), kubeconfig, bulk loading, request log."""

    def __init__(self, *, bookmark_interval: float = 1.0, history_limit: int = 10_000) -> None:
        options = {"bookmark_interval": bookmark_interval, "history_limit": history_limit}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_apiserver_process", json.dumps(options)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.url: str = hello["url"]
        self.token: str | None = hello["token"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        return write_kubeconfig(self.url, self.token, path, namespace)

    def api_client(self) -> kubernetes.client.ApiClient:
        return api_client(self.url, self.token)

    def put(self, objects: list[dict[str, Any]]) -> int:
        """Store objects as they are (``FakeApiServer.put``), in one round trip."""
        return self._call({"op": "put", "objects": objects})["stored"]

    def requests(self, since: int = 0) -> list[RecordedRequest]:
        """The requests served so far (from index ``since`` on), oldest first."""
        return [RecordedRequest(*request) for request in self._call({"op": "requests", "since": since})["requests"]]

    def errors(self) -> list[str]:
        """Tracebacks of unexpected exceptions inside the server (bugs in the fake)."""
        return self._call({"op": "errors"})["errors"]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the child stops its server and exits
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> FakeApiServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake API server process exited ({self.process.poll()})")
        return json.loads(line)


def _answer(server: FakeApiServer, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "put":
        for obj in command["objects"]:
            server.put(obj)
        return {"stored": len(command["objects"])}
    if op == "requests":
        recorded = server.requests
        return {"requests": [list(request) for request in recorded[command.get("since", 0) :]], "total": len(recorded)}
    if op == "errors":
        return {"errors": list(server.errors)}
    return {"error": f"unknown op {op!r}"}


def _serve(options: dict[str, Any], commands: IO[str], answers: IO[str]) -> None:
    with FakeApiServer(**options) as server:
        answers.write(json.dumps({"url": server.url, "token": server.token}) + "\n")
        answers.flush()
        for line in commands:
            answers.write(json.dumps(_answer(server, json.loads(line))) + "\n")
            answers.flush()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]), sys.stdin, sys.stdout)
