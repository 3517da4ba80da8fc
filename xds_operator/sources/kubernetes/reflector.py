"""List-then-watch one Kubernetes collection, in a thread (what client-go calls a reflector).

The loop: LIST (paginated) → hand the full state over as `Synced`; WATCH from the list's
resourceVersion with bookmarks → hand each change over as `Changed`. A watch that ends
(server timeout, dropped connection) resumes from the last resourceVersion seen, so nothing
is missed; `410 Gone` (the history was compacted) means relist, and the consumer reconciles
the full state against what it had, so nothing stale survives. Errors back off
exponentially. The thread only parses JSON and calls `sink`; the consumer owns the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

PAGE_SIZE = 500
WATCH_TIMEOUT_SECONDS = 300  # the server ends each watch after this; we resume at once
CONNECT_TIMEOUT_SECONDS = 10
LIST_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Synced:
    """The complete current collection, after a (re)list."""

    objects: list[Mapping[str, Any]]


@dataclass(frozen=True)
class Changed:
    """One watch event: ADDED, MODIFIED or DELETED."""

    type: str
    object: Mapping[str, Any]


Event = Synced | Changed
# A list function of the kubernetes client (e.g. CoreV1Api.list_pod_for_all_namespaces), bound to its path arguments.
ListCall = Callable[..., Any]


class Expired(Exception):
    """The resourceVersion we resume from is too old (410 Gone): relist."""


class ApiError(Exception):
    pass


class Backoff:
    """Exponential delays with jitter, reset after success."""

    def __init__(self, initial: float = 0.2, maximum: float = 30.0):
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial


class Reflector:
    def __init__(
        self,
        name: str,
        list_call: ListCall,
        sink: Callable[[Event], None],
        *,
        page_size: int = PAGE_SIZE,
        watch_timeout: int = WATCH_TIMEOUT_SECONDS,
        backoff: Backoff | None = None,
    ):
        self.name = name
        self._list_call = list_call
        self._sink = sink
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._backoff = backoff or Backoff()
        self._stopped = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"reflector {name}", daemon=True)
        self.lists = 0  # how many times it listed (the first list, then one per 410), for metrics
        self.watches = 0  # how many watches it started (one, then one per end, drop or failure), for metrics

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stopped.set()
        _interrupt(self._response)
        self._thread.join(timeout)

    def _run(self) -> None:
        resource_version: str | None = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                resource_version = self._watch(resource_version)
            except Expired as expired:
                log.info("%s: %s; listing again", self.name, expired)
                resource_version = None
            except Exception as error:  # any failure: back off, then resume where we were
                if self._stopped.is_set():
                    break
                delay = self._backoff.next()
                log.warning("%s: %s; retrying in %.1fs", self.name, _describe(error), delay)
                self._stopped.wait(delay)

    def _list(self) -> str:
        objects: list[Mapping[str, Any]] = []
        token: str | None = None
        while True:
            body = self._request(
                limit=self._page_size,
                _continue=token,
                _request_timeout=(CONNECT_TIMEOUT_SECONDS, LIST_TIMEOUT_SECONDS),
            )
            objects.extend(body.get("items") or ())
            metadata = body.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
        self.lists += 1
        self._backoff.reset()
        self._sink(Synced(objects))
        return str(metadata.get("resourceVersion", ""))

    def _request(self, **params: Any) -> dict[str, Any]:
        response = self._call(**params)
        try:
            body: dict[str, Any] = json.loads(response.data)
            return body
        finally:
            response.release_conn()

    def _call(self, **params: Any) -> Any:
        """The raw HTTP response (no model deserialization: we keep plain dicts)."""
        try:
            return self._list_call(_preload_content=False, **params)
        except ApiException as error:
            if error.status == 410:
                raise Expired(_status_message(error) or "410 Gone") from error
            raise ApiError(f"HTTP {error.status} {error.reason}: {_status_message(error)}") from error

    def _watch(self, resource_version: str) -> str:
        """Follow changes from resource_version until the stream ends; return the last version seen."""
        self.watches += 1
        response = self._response = self._call(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, self._watch_timeout + 30),
        )
        try:
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message") or "resource version expired")
                    raise ApiError(f"watch error {obj.get('code')}: {obj.get('message')}")
                resource_version = (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                self._backoff.reset()
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._sink(Changed(kind, obj))
            return resource_version
        finally:
            self._response = None
            response.release_conn()


def _status_message(error: ApiException) -> str:
    """The message of the Kubernetes Status object in an error response."""
    try:
        return str(json.loads(error.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        return ""


def _interrupt(response: Any) -> None:
    """Unblock a thread reading a watch stream: shut its socket down."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:300] + "…"
