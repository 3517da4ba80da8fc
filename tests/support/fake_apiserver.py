"""An in-process fake Kubernetes API server that speaks the real HTTP protocol.

No Kubernetes API server can run on this machine, so Kubernetes code is tested against this
server with the unmodified official ``kubernetes`` client (CoreV1Api, CustomObjectsApi,
``kubernetes.watch.Watch``) or raw HTTP. It runs in a background thread (stdlib
``ThreadingHTTPServer``, HTTP/1.1), so sync code and asyncio tests can both use it.

Supported:

- Resources (all namespaced; the store is generic, add one with a ``ResourceType`` line):
  core/v1 ``pods`` and ``events``, ``events.k8s.io/v1`` ``events``, ``coordination.k8s.io/v1``
  ``leases`` and ``servicemesh.l7mp.io/v1`` ``virtualservices`` (status subresource, generation).
  Paths: ``/api/v1/{plural}`` and ``/apis/{g}/{v}/{plural}`` (cluster-wide list/watch),
  ``.../namespaces/{ns}/{plural}[/{name}[/status]]``. Minimal discovery (``/version``, ``/api``,
  ``/apis``, ``/api/v1``, ``/apis/{g}/{v}``).
- Verbs: get; list (``labelSelector`` with ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``,
  ``!key``; ``fieldSelector`` on any dotted field path with ``=``, ``==``, ``!=``; ``limit`` and
  ``continue`` giving a consistent snapshot at the first page's resourceVersion; ``resourceVersion``
  with ``resourceVersionMatch=Exact``); watch; create (``generateName`` too); replace; patch
  (merge, JSON patch, strategic merge treated as merge); delete (DeleteOptions preconditions,
  finalizers; ``propagationPolicy`` / ``orphanDependents``, in the body or the query); deletecollection;
  ``dryRun=All``.
- Garbage collection of ``ownerReferences``, in a thread of its own as in Kubernetes (after the write
  that orphans an object, never inside it): an object all of whose owners are gone is deleted
  (background), a gone owner is dropped from the references of an object that still has another;
  ``Foreground`` deletes the owner's dependents first and waits for those with
  ``blockOwnerDeletion``; ``Orphan`` removes the owner from its dependents' references. See
  ``_GarbageCollector`` for what is not modelled.
- Server-owned metadata: ``uid``, ``creationTimestamp``, ``resourceVersion`` (one global counter),
  ``generation`` (custom resources: +1 only when ``spec`` changes), ``namespace`` from the URL.
- Watches: chunked JSON lines, replay from a resourceVersion out of a bounded history, 410
  ``Expired`` as an ERROR event for compacted history, label/field selector transitions
  (an object that stops matching is sent as DELETED, one that starts matching as ADDED, as the
  real watch cache does), ``timeoutSeconds`` (fractions allowed), ``allowWatchBookmarks``,
  ``sendInitialEvents``.
- Test controls: ``drop_watches``, ``expire_watches``, ``compact``, ``send_bookmarks``,
  ``fail_next`` (by path, method or User-Agent) and ``clear_failures``, ``requests`` (with each
  client's User-Agent), ``open_watches``, ``wait_for``, and direct store access (``put``, ``get``,
  ``delete``, ``list``) that bypasses the API but still produces watch events.

Deviations from a real apiserver worth knowing are listed in ``FakeApiServer``'s docstring.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import itertools
import json
import os
import random
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import kubernetes.client

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


# ---------------------------------------------------------------------------------------------
# Resource types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """One namespaced resource the server stores and serves."""

    group: str
    version: str
    plural: str
    kind: str
    status_subresource: bool = False  # main writes keep .status; /status writes change only .status
    generation: bool = False  # metadata.generation counts spec changes
    unconditional_update: bool = True  # PUT without metadata.resourceVersion allowed (CRDs: no)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """The name used in error messages, e.g. ``pods`` or ``virtualservices.servicemesh.l7mp.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    # Pods: status is writable through the main resource too, so tests can set podIP/conditions freely.
    ResourceType("", "v1", "pods", "Pod"),
    ResourceType("", "v1", "events", "Event"),
    ResourceType("events.k8s.io", "v1", "events", "Event"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),
    ResourceType(
        "servicemesh.l7mp.io",
        "v1",
        "virtualservices",
        "VirtualService",
        status_subresource=True,
        generation=True,
        unconditional_update=False,
    ),
)


# ---------------------------------------------------------------------------------------------
# Errors as Kubernetes Status objects
# ---------------------------------------------------------------------------------------------

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A failure ``Status`` as the apiserver sends it in error responses and watch ERROR events."""
    status: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    status.update({"reason": reason, "details": details or {}, "code": code})
    return status


class StatusError(Exception):
    """Raised inside the server; becomes an HTTP error response carrying a Status body."""

    def __init__(self, code: int, message: str, reason: str | None = None, details: Obj | None = None) -> None:
        super().__init__(message)
        self.status = status_object(code, reason or _REASONS.get(code, "Unknown"), message, details)

    @property
    def code(self) -> int:
        return self.status["code"]


def _not_found(rtype: ResourceType, name: str) -> StatusError:
    details = {"name": name, "group": rtype.group, "kind": rtype.plural}
    return StatusError(404, f'{rtype.resource} "{name}" not found', details=details)


def _conflict(rtype: ResourceType, name: str) -> StatusError:
    message = (
        f'Operation cannot be fulfilled on {rtype.resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return StatusError(409, message, details={"name": name, "group": rtype.group, "kind": rtype.plural})


# ---------------------------------------------------------------------------------------------
# Small pure helpers: time, names, selectors, patches
# ---------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TRUE = {"1", "t", "T", "true", "TRUE", "True"}  # what Go's strconv.ParseBool accepts


def _clone(value: Any) -> Any:
    """A deep copy of a JSON value: a C-speed JSON round trip, several times faster than copy.deepcopy."""
    return json.loads(json.dumps(value))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Obj) -> Obj:
    return obj.setdefault("metadata", {})


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


def _lookup(obj: Any, dotted: str) -> str:
    """The value at a dotted field path as a string ('' when missing), for field selectors."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return ""
        obj = obj[part]
    return obj if isinstance(obj, str) else json.dumps(obj)


def _split_requirements(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (a,b)`` parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    parts.append(selector[start:])
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^([\w./-]+)\s+(in|notin)\s*\(([^)]*)\)$")
_EQ_RE = re.compile(r"^([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)$")
_EXISTS_RE = re.compile(r"^(!?)\s*([\w./-]+)$")


def _label_requirement(req: str) -> Callable[[dict[str, str]], bool]:
    if m := _SET_RE.match(req):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: key in labels and labels[key] in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(req):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if m := _EXISTS_RE.match(req):
        negate, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negate
    raise StatusError(400, f"unable to parse requirement: {req!r}")


def label_matcher(selector: str) -> Matcher:
    """A predicate on objects for a label selector string; '' matches everything."""
    requirements = [_label_requirement(r) for r in _split_requirements(selector)]
    return lambda obj: all(r(obj.get("metadata", {}).get("labels") or {}) for r in requirements)


def field_matcher(selector: str) -> Matcher:
    """A predicate for a field selector. Any dotted path is accepted (real servers allow a fixed set)."""
    requirements = []
    for req in _split_requirements(selector):
        m = re.match(r"^([\w.-]+)\s*(==|!=|=)\s*(.*)$", req)
        if not m:
            raise StatusError(400, f"invalid field selector: {req!r}")
        requirements.append(m.groups())
    return lambda obj: all((_lookup(obj, path) == value) == (op != "!=") for path, op, value in requirements)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return _clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise StatusError(422, f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    """The container holding the pointer's last token, and that token."""
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token)
    return node, tokens[-1]


def _child(node: Any, token: str) -> Any:
    try:
        return node[int(token)] if isinstance(node, list) else node[token]
    except (KeyError, IndexError, ValueError, TypeError):
        raise StatusError(422, f"JSON patch path not found at {token!r}") from None


def _json_patch_op(doc: Any, op: Obj) -> Any:
    kind, tokens = op.get("op"), _pointer(op.get("path", ""))
    if kind == "test":
        if (_get_pointer(doc, tokens) if tokens else doc) != op.get("value"):
            raise StatusError(422, f"JSON patch test failed at {op.get('path')!r}")
        return doc
    if kind in ("move", "copy"):
        value = _get_pointer(doc, _pointer(op.get("from", "")))
        if kind == "move":
            doc = _remove(doc, _pointer(op["from"]))
        return _add(doc, tokens, _clone(value))
    if kind == "remove":
        return _remove(doc, tokens)
    if kind in ("add", "replace") and "value" in op:
        if kind == "replace":
            doc = _remove(doc, tokens)
        return _add(doc, tokens, _clone(op["value"]))
    raise StatusError(422, f"invalid JSON patch operation: {op!r}")


def _get_pointer(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        doc = _child(doc, token)
    return doc


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, last = _parent(doc, tokens)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise StatusError(422, f"JSON patch index out of range: {last!r}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise StatusError(422, f"JSON patch cannot add into {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return None
    parent, last = _parent(doc, tokens)
    _child(parent, last)  # raises 422 when missing
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise StatusError(422, "a JSON patch must be a list of operation objects")
    doc = _clone(doc)
    for op in ops:
        doc = _json_patch_op(doc, op)
    return doc


def _encode_continue(rv: int, last: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"rv": rv, "start": list(last)}).encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        raise StatusError(400, f"invalid continue token: {token!r}") from None


def _int_param(query: dict[str, str], name: str) -> float | None:
    """A numeric query parameter; None when absent, empty or zero (zero means "server default")."""
    try:
        value = float(query.get(name) or 0)
    except ValueError:
        raise StatusError(400, f"invalid {name}: {query[name]!r}") from None
    return value if value > 0 else None


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        rv = -1
    if rv < 0:
        raise StatusError(400, f"invalid resource version: {value!r}")
    return rv


# ---------------------------------------------------------------------------------------------
# The store: objects, resourceVersion, bounded history, watchers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """One write in the history. ``obj`` is the new state (for DELETED: the final state), ``prev`` the old."""

    rv: int
    type: str
    rtype: ResourceType
    obj: Obj
    prev: Obj | None


_END = b""  # queue marker: end the stream cleanly (terminating chunk)


def _event_line(etype: str, obj: Obj) -> bytes:
    return json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"


class _Watcher:
    """One open watch: a queue of encoded event lines plus a socket pair to wake its handler thread."""

    def __init__(self, rtype: ResourceType, matches: Matcher, bookmarks: bool) -> None:
        self.rtype, self.matches, self.bookmarks = rtype, matches, bookmarks
        self.items: deque[bytes] = deque()
        self.aborted = False  # set by drop_watches/stop: close the socket without the terminating chunk
        self.done = threading.Event()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def push(self, line: bytes) -> None:
        self.items.append(line)
        self.wake()

    def wake(self) -> None:
        # A full buffer already means a wake-up is pending; a closed one means the watch has ended.
        with contextlib.suppress(OSError):
            self.wake_w.send(b"\0")

    def clear_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self.wake_r.recv(4096):
                pass

    def abort(self) -> None:
        self.aborted = True
        self.wake()

    def classify(self, change: _Change) -> str | None:
        """The event type this watcher sees for a change, given its selectors (None: not sent)."""
        now = self.matches(change.obj)
        if change.type in (ADDED, DELETED):
            return change.type if now else None
        before = change.prev is not None and self.matches(change.prev)
        if before and now:
            return MODIFIED
        return ADDED if now else DELETED if before else None

    def close(self) -> None:
        self.wake_r.close()
        self.wake_w.close()


class _Store:
    """All state behind one re-entrant lock; ``changed`` is notified on every write and watch open/close."""

    def __init__(self, types: Iterable[ResourceType], history_limit: int) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {t: {} for t in types}
        self.rv = 1  # never "0": a list RV of 0 would mean "any" to a following watch
        self.compacted_rv = 1  # every change with rv > compacted_rv is in history
        self.history: deque[_Change] = deque()
        self.history_limit = max(1, history_limit)
        self.watchers: list[_Watcher] = []
        self.observers: list[Callable[[_Change], None]] = []  # called under the lock after every write

    # -- writes ---------------------------------------------------------------------------------

    def commit(self, rtype: ResourceType, etype: str, obj: Obj, prev: Obj | None) -> Obj:
        """Store a new state, record it and feed the watchers. Returns the stored object itself: never
        mutate it (answers are serialized as they are; the public methods hand out copies)."""
        with self.lock:
            self.rv += 1
            _meta(obj)["resourceVersion"] = str(self.rv)
            if etype == DELETED:
                self.objects[rtype].pop(_key(obj), None)
            else:
                self.objects[rtype][_key(obj)] = obj
            change = _Change(self.rv, etype, rtype, obj, prev)
            if len(self.history) >= self.history_limit:
                self.compacted_rv = self.history.popleft().rv
            self.history.append(change)
            for observe in self.observers:
                observe(change)
            lines: dict[str, bytes] = {}  # encoded once per event type, whatever the number of watchers
            for watcher in self.watchers:
                if watcher.rtype is rtype and (seen := watcher.classify(change)):
                    if seen not in lines:
                        lines[seen] = _event_line(seen, obj)
                    watcher.push(lines[seen])
            self.changed.notify_all()
            return obj

    def compact(self) -> None:
        with self.lock:
            self.history.clear()
            self.compacted_rv = self.rv

    # -- reads ----------------------------------------------------------------------------------

    def current(self, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
        with self.lock:
            return self.objects[rtype].get((namespace, name))

    def snapshot(self, rtype: ResourceType, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects as they were at ``rv``, rebuilt by undoing later changes (410 if compacted)."""
        with self.lock:
            if rv < self.compacted_rv:
                raise StatusError(410, f"too old resource version: {rv} ({self.compacted_rv + 1})")
            state = dict(self.objects[rtype])
            for change in reversed(self.history):
                if change.rv <= rv:
                    break
                if change.rtype is rtype:
                    if change.prev is None:
                        state.pop(_key(change.obj), None)
                    else:
                        state[_key(change.obj)] = change.prev
            return state

    # -- watches --------------------------------------------------------------------------------

    def open_watch(self, rtype: ResourceType, matches: Matcher, rv_param: str, bookmarks: bool) -> _Watcher:
        """Register a watcher with its initial events queued; atomic with writes, so nothing is missed."""
        with self.lock:
            watcher = _Watcher(rtype, matches, bookmarks)
            if rv_param in ("", "0"):
                for _, obj in sorted(self.objects[rtype].items()):
                    if matches(obj):
                        watcher.items.append(_event_line(ADDED, obj))
            else:
                rv = _parse_rv(rv_param)
                if rv < self.compacted_rv:
                    watcher.close()
                    raise StatusError(410, f"too old resource version: {rv} ({self.compacted_rv + 1})")
                for change in self.history:
                    if change.rv > rv and change.rtype is rtype and (seen := watcher.classify(change)):
                        watcher.items.append(_event_line(seen, change.obj))
            self.watchers.append(watcher)
            self.changed.notify_all()
            return watcher

    def close_watch(self, watcher: _Watcher) -> None:
        with self.lock:
            if watcher in self.watchers:
                self.watchers.remove(watcher)
            self.changed.notify_all()
        watcher.done.set()

    def bookmark(self, watcher: _Watcher, annotations: dict[str, str] | None = None) -> None:
        # Queued under the lock, so the bookmark RV never runs ahead of events still in the queue.
        with self.lock:
            meta: Obj = {"resourceVersion": str(self.rv)}
            if annotations:
                meta["annotations"] = annotations
            obj = {"kind": watcher.rtype.kind, "apiVersion": watcher.rtype.api_version, "metadata": meta}
            watcher.push(_event_line(BOOKMARK, obj))


ORPHAN_FINALIZER, FOREGROUND_FINALIZER = "orphan", "foregroundDeletion"
_GC_FINALIZERS = {"Background": None, "Foreground": FOREGROUND_FINALIZER, "Orphan": ORPHAN_FINALIZER}


def _propagation_policy(options: Obj) -> str:
    """DeleteOptions' policy: ``propagationPolicy``, else legacy ``orphanDependents``, else Background."""
    policy = options.get("propagationPolicy")
    if policy is None:
        return "Orphan" if options.get("orphanDependents") is True else "Background"
    if policy not in _GC_FINALIZERS:
        supported = '"Background", "Foreground", "Orphan"'
        message = f'propagationPolicy: Unsupported value: "{policy}": supported values: {supported}'
        raise StatusError(422, message)
    return policy


def _owner_refs(obj: Obj | None) -> list[Obj]:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return [ref for ref in refs if isinstance(ref, dict) and ref.get("uid")]


class _GarbageCollector:
    """Kubernetes' garbage collector for ``ownerReferences``, acting in a thread of its own after writes.

    An owner reference names an object in the dependent's namespace by apiVersion, kind, name and uid;
    the owner is gone when no object of that kind and name has that uid. A dependent is looked at when
    its references change and when one of its owners is deleted (an index from owner uid to dependents
    keeps that O(dependents)). Like the real one (``attemptToDeleteItem``): when every owner is gone or
    waiting for its dependents' deletion (Foreground), the dependent is deleted (background); when some
    owner remains, the others are removed from its references. An owner being deleted with ``Orphan``
    has itself removed from its dependents' references, then loses its ``orphan`` finalizer; with
    ``Foreground``, its dependents are dealt with as above and it loses ``foregroundDeletion`` once no
    dependent with ``blockOwnerDeletion: true`` remains.

    Not modelled: cluster-scoped owners (every resource here is namespaced); references to kinds the
    fake does not serve (such a reference counts as a live owner, where the real collector would retry
    forever); dependents of a Foreground deletion are deleted in the background, not in the foreground
    in turn; changing an object's policy by deleting it again while it is terminating; the
    ``OwnerReferencesPermissionEnforcement`` admission check of ``blockOwnerDeletion``; the real
    collector's delay (a resync) before it notices owners that never existed.
    """

    def __init__(self, store: _Store, api: _Api, types: Iterable[ResourceType], errors: list[str]) -> None:
        self.store, self.api, self.errors = store, api, errors
        self.kinds = {(t.api_version, t.kind): t for t in types}
        self.dependents: dict[str, set[tuple[ResourceType, str, str]]] = {}  # owner uid -> dependents' keys
        self.pending: deque[tuple[ResourceType, str, str]] = deque()
        self.wake = threading.Condition(threading.Lock())
        self.stopped = False
        self.thread: threading.Thread | None = None
        store.observers.append(self.observe)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="fake-apiserver-gc", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopped = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(1.0)

    def observe(self, change: _Change) -> None:
        """Under the store lock, for every write: keep the index, queue what may need collecting."""
        key = (change.rtype, *_key(change.obj))
        before = {ref["uid"] for ref in _owner_refs(change.prev)}
        after = set() if change.type == DELETED else {ref["uid"] for ref in _owner_refs(change.obj)}
        for uid in before - after:
            dependents = self.dependents.get(uid)
            if dependents is not None:
                dependents.discard(key)
                if not dependents:
                    del self.dependents[uid]
        for uid in after - before:
            self.dependents.setdefault(uid, set()).add(key)
        todo: list[tuple[ResourceType, str, str]] = []
        meta = change.obj["metadata"]
        if change.type == DELETED:
            todo.extend(self.dependents.get(meta.get("uid", ""), ()))  # they may be orphans now
            todo.extend(self._owner_keys(change.obj))  # an owner may be waiting for its dependents to go
        else:
            if after - before:
                todo.append(key)  # a reference to an owner that is gone already
            if meta.get("deletionTimestamp") and {ORPHAN_FINALIZER, FOREGROUND_FINALIZER} & set(
                meta.get("finalizers") or ()
            ):
                todo.append(key)
        if todo:
            with self.wake:
                self.pending.extend(todo)
                self.wake.notify()

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.pending and not self.stopped:
                    self.wake.wait()
                if self.stopped:
                    return
                key = self.pending.popleft()
            try:
                with self.store.lock:
                    self._attend(key)
            except Exception:  # a bug in the fake: reported through FakeApiServer.errors
                self.errors.append(traceback.format_exc())

    def _owner_keys(self, obj: Obj) -> list[tuple[ResourceType, str, str]]:
        namespace = obj["metadata"].get("namespace", "")
        keys = []
        for ref in _owner_refs(obj):
            rtype = self.kinds.get((ref.get("apiVersion"), ref.get("kind")))
            if rtype is not None:
                keys.append((rtype, namespace, str(ref.get("name"))))
        return keys

    def _owner(self, ref: Obj, namespace: str) -> Obj | None | bool:
        """The owner object; None when gone; True when its kind is not served here (counted as alive)."""
        rtype = self.kinds.get((ref.get("apiVersion"), ref.get("kind")))
        if rtype is None:
            return True
        owner = self.store.current(rtype, namespace, str(ref.get("name")))
        return owner if owner is not None and owner["metadata"].get("uid") == ref["uid"] else None

    def _attend(self, key: tuple[ResourceType, str, str]) -> None:
        rtype, namespace, name = key
        obj = self.store.current(rtype, namespace, name)
        if obj is None:
            return
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp") and ORPHAN_FINALIZER in finalizers:
            for dependent in list(self.dependents.get(meta["uid"], ())):
                self._drop_references(dependent, {meta["uid"]})
            self._drop_finalizer(key, ORPHAN_FINALIZER)
            return
        if meta.get("deletionTimestamp") and FOREGROUND_FINALIZER in finalizers:
            for dependent in list(self.dependents.get(meta["uid"], ())):
                self._attend_dependent(dependent)
            if not any(self._blocks(dependent, meta["uid"]) for dependent in self.dependents.get(meta["uid"], ())):
                self._drop_finalizer(key, FOREGROUND_FINALIZER)
        self._attend_dependent(key)

    def _attend_dependent(self, key: tuple[ResourceType, str, str]) -> None:
        rtype, namespace, name = key
        obj = self.store.current(rtype, namespace, name)
        refs = _owner_refs(obj)
        if obj is None or not refs:
            return
        solid, gone = [], set()
        for ref in refs:
            owner = self._owner(ref, namespace)
            waiting = isinstance(owner, dict) and FOREGROUND_FINALIZER in (owner["metadata"].get("finalizers") or ())
            if owner is None or (waiting and owner["metadata"].get("deletionTimestamp")):
                gone.add(ref["uid"])
            else:
                solid.append(ref)
        if not gone:
            return
        if solid:
            self._drop_references(key, gone)
        elif not obj["metadata"].get("deletionTimestamp"):
            self.api.delete(rtype, namespace, name, {"propagationPolicy": "Background"})

    def _blocks(self, key: tuple[ResourceType, str, str], owner_uid: str) -> bool:
        obj = self.store.current(*key)
        return any(ref["uid"] == owner_uid and ref.get("blockOwnerDeletion") is True for ref in _owner_refs(obj))

    def _drop_references(self, key: tuple[ResourceType, str, str], uids: set[str]) -> None:
        rtype, namespace, name = key
        obj = self.store.current(rtype, namespace, name)
        if obj is None:
            return
        updated = _clone(obj)
        kept = [ref for ref in updated["metadata"].get("ownerReferences") or [] if ref.get("uid") not in uids]
        if kept:
            updated["metadata"]["ownerReferences"] = kept
        else:
            updated["metadata"].pop("ownerReferences", None)
        self.api.update(rtype, namespace, name, updated)

    def _drop_finalizer(self, key: tuple[ResourceType, str, str], finalizer: str) -> None:
        rtype, namespace, name = key
        obj = self.store.current(rtype, namespace, name)
        if obj is None:
            return
        updated = _clone(obj)
        updated["metadata"]["finalizers"] = [f for f in updated["metadata"].get("finalizers") or [] if f != finalizer]
        if not updated["metadata"]["finalizers"]:
            del updated["metadata"]["finalizers"]
        self.api.update(rtype, namespace, name, updated)  # the last finalizer gone: deleted


# ---------------------------------------------------------------------------------------------
# API semantics: create / update / patch / delete / list on top of the store
# ---------------------------------------------------------------------------------------------


def _check_identity(rtype: ResourceType, body: Obj) -> None:
    if body.get("apiVersion") not in (None, rtype.api_version) or body.get("kind") not in (None, rtype.kind):
        found = f"{body.get('apiVersion')}, Kind={body.get('kind')}"
        raise StatusError(400, f"the body is {found}; expected {rtype.api_version}, Kind={rtype.kind}")
    if not isinstance(body.get("metadata", {}), dict):
        raise StatusError(422, "metadata must be an object")


def _check_namespace(body: Obj, namespace: str) -> None:
    if _meta(body).get("namespace") not in (None, "", namespace):
        message = "the namespace of the provided object does not match the namespace sent on the request"
        raise StatusError(400, message)


class _Api:
    """The apiserver's write and read rules; every method takes the store lock for its whole run."""

    def __init__(self, store: _Store) -> None:
        self.store = store

    def create(self, rtype: ResourceType, namespace: str, body: Obj, dry_run: bool = False) -> Obj:
        _check_identity(rtype, body)
        _check_namespace(body, namespace)
        obj = _clone(body)
        meta = _meta(obj)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))
        name = meta.get("name")
        if not name:
            raise StatusError(422, "metadata.name: Required value: name or generateName is required")
        if not isinstance(name, str) or len(name) > 253 or not _NAME_RE.match(name):
            raise StatusError(422, f'metadata.name: Invalid value: "{name}": must be a lowercase RFC 1123 subdomain')
        if rtype.status_subresource:
            obj.pop("status", None)  # like a CRD with the status subresource: create ignores status
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        for server_owned in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_owned, None)
        if rtype.generation:
            meta["generation"] = 1
        with self.store.lock:
            if self.store.current(rtype, namespace, name) is not None:
                details = {"name": name, "group": rtype.group, "kind": rtype.plural}
                raise StatusError(409, f'{rtype.resource} "{name}" already exists', "AlreadyExists", details)
            if dry_run:
                return obj
            return self.store.commit(rtype, ADDED, obj, None)

    def update(
        self, rtype: ResourceType, namespace: str, name: str, body: Obj, status: bool = False, dry_run: bool = False
    ) -> Obj:
        _check_identity(rtype, body)
        _check_namespace(body, namespace)
        if _meta(body).get("name") not in (None, name):
            message = f"the name of the object ({_meta(body).get('name')}) does not match the name on the URL ({name})"
            raise StatusError(400, message)
        with self.store.lock:
            current = self.store.current(rtype, namespace, name)
            if current is None:
                raise _not_found(rtype, name)
            self._check_resource_version(rtype, name, body, current)
            obj = self._next_state(rtype, current, body, status)
            if obj == current:
                return current  # a no-op write is not a write: no new RV, no event
            if dry_run:
                return obj
            if self._finalized(obj):
                return self.store.commit(rtype, DELETED, obj, current)
            return self.store.commit(rtype, MODIFIED, obj, current)

    @staticmethod
    def _finalized(obj: Obj) -> bool:
        """A DELETE waited for finalizers and the last one is gone (the apiserver's shouldDeleteDuringUpdate)."""
        meta = obj["metadata"]
        return (
            bool(meta.get("deletionTimestamp"))
            and meta.get("deletionGracePeriodSeconds") == 0
            and not meta.get("finalizers")
        )

    @staticmethod
    def _check_resource_version(rtype: ResourceType, name: str, body: Obj, current: Obj) -> None:
        rv = _meta(body).get("resourceVersion")
        if rv:
            if rv != current["metadata"]["resourceVersion"]:
                raise _conflict(rtype, name)
        elif not rtype.unconditional_update:
            raise StatusError(422, f'{rtype.kind}.{rtype.group} "{name}" is invalid: metadata.resourceVersion: '
                              "Invalid value: 0: must be specified for an update")  # fmt: skip

    @staticmethod
    def _next_state(rtype: ResourceType, current: Obj, body: Obj, status: bool) -> Obj:
        """The object after a write: only .status for /status, everything but .status with a subresource."""
        if status:
            obj = _clone(current)
            obj.pop("status", None)
            if "status" in body:
                obj["status"] = _clone(body["status"])
            return obj
        obj = _clone(body)
        if rtype.status_subresource:  # the main resource cannot change status
            obj.pop("status", None)
            if "status" in current:
                obj["status"] = _clone(current["status"])
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta, old = _meta(obj), current["metadata"]
        owned_fields = ("name", "namespace", "uid", "creationTimestamp", "resourceVersion")
        for owned in (*owned_fields, "deletionTimestamp", "deletionGracePeriodSeconds"):
            if owned in old:
                meta[owned] = old[owned]
            else:
                meta.pop(owned, None)
        if rtype.generation:
            meta["generation"] = old.get("generation", 1) + (obj.get("spec") != current.get("spec"))
        return obj

    def patch(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        status: bool = False,
        dry_run: bool = False,
    ) -> Obj:
        with self.store.lock:
            current = self.store.current(rtype, namespace, name)
            if current is None:
                raise _not_found(rtype, name)
            if content_type == "application/json-patch+json":
                patched = json_patch(current, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                if not isinstance(patch, dict):
                    raise StatusError(422, "a merge patch must be a JSON object")
                patched = merge_patch(current, patch)
            else:
                raise StatusError(415, f"the body of the request was in an unknown format: {content_type}")
            if not isinstance(patched, dict):
                raise StatusError(422, "the patched object is not a JSON object")
            _meta(patched).setdefault("resourceVersion", current["metadata"]["resourceVersion"])
            return self.update(rtype, namespace, name, patched, status, dry_run)

    def delete(
        self, rtype: ResourceType, namespace: str, name: str, options: Obj | None = None, dry_run: bool = False
    ) -> Obj:
        with self.store.lock:
            current = self.store.current(rtype, namespace, name)
            if current is None:
                raise _not_found(rtype, name)
            options = options or {}
            self._check_preconditions(rtype, name, options.get("preconditions") or {}, current)
            obj = _clone(current)
            meta = obj["metadata"]
            gc_finalizer = _GC_FINALIZERS[_propagation_policy(options)]
            if meta.get("finalizers") or gc_finalizer:
                if meta.get("deletionTimestamp"):
                    return obj  # already terminating: nothing changes until the finalizers go
                if gc_finalizer and gc_finalizer not in meta.get("finalizers", ()):
                    meta["finalizers"] = [*meta.get("finalizers", ()), gc_finalizer]
                meta.update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
                if rtype.generation:
                    meta["generation"] = meta.get("generation", 1) + 1
                return obj if dry_run else self.store.commit(rtype, MODIFIED, obj, current)
            return obj if dry_run else self.store.commit(rtype, DELETED, obj, current)

    @staticmethod
    def _check_preconditions(rtype: ResourceType, name: str, preconditions: Obj, current: Obj) -> None:
        for field_name in ("uid", "resourceVersion"):
            wanted, actual = preconditions.get(field_name), current["metadata"].get(field_name)
            if wanted and wanted != actual:
                message = (
                    f'Operation cannot be fulfilled on {rtype.resource} "{name}": Precondition failed: '
                    f"{field_name} in precondition: {wanted}, {field_name} in object meta: {actual}"
                )
                raise StatusError(409, message, "Conflict")

    def list(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> Obj:
        """A list (one page with ``limit``). Items are the stored objects themselves: serialize, never mutate.

        A page looks at the keys after the continue token only up to the first match past the page,
        so paging through N objects costs O(N) matches, not O(N²/limit). As on a real apiserver,
        ``remainingItemCount`` is left out when the request has a label or field selector.
        """
        matches = self.matcher(namespace, query)
        limit = int(_int_param(query, "limit") or 0)
        with self.store.lock:
            rv, start, state = self._list_state(rtype, query)
            keys = sorted(state)
            candidates = (k for k in keys[bisect.bisect_right(keys, start) :] if matches(state[k]))
            page = list(itertools.islice(candidates, limit)) if limit else list(candidates)
            metadata: Obj = {"resourceVersion": str(rv)}
            if limit and next(candidates, None) is not None:
                metadata["continue"] = _encode_continue(rv, page[-1])
                if not query.get("labelSelector") and not query.get("fieldSelector"):
                    after = keys[bisect.bisect_right(keys, page[-1]) :]
                    metadata["remainingItemCount"] = sum(1 for k in after if namespace in (None, k[0]))
            items = [state[k] for k in page]
        return {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": metadata, "items": items}

    def _list_state(self, rtype: ResourceType, query: dict[str, str]) -> tuple[int, tuple[str, str], dict]:
        """(list RV, key to start after, objects) for a list request."""
        if token := query.get("continue"):
            rv, start = _decode_continue(token)
            try:
                return rv, start, self.store.snapshot(rtype, rv)
            except StatusError:
                message = (
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter."
                )
                raise StatusError(410, message, "Expired") from None
        wanted = query.get("resourceVersion", "")
        if wanted not in ("", "0"):
            rv = _parse_rv(wanted)
            if rv > self.store.rv:
                raise StatusError(504, f"Too large resource version: {rv}, current: {self.store.rv}", "Timeout")
            if query.get("resourceVersionMatch") == "Exact":
                return rv, ("", ""), self.store.snapshot(rtype, rv)
        return self.store.rv, ("", ""), dict(self.store.objects[rtype])

    @staticmethod
    def matcher(namespace: str | None, query: dict[str, str]) -> Matcher:
        labels = label_matcher(query.get("labelSelector", ""))
        fields = field_matcher(query.get("fieldSelector", ""))
        in_namespace: Matcher = (lambda _: True) if namespace is None else (lambda o: _key(o)[0] == namespace)
        return lambda obj: in_namespace(obj) and labels(obj) and fields(obj)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class RecordedRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    user_agent: str = ""  # tells clients apart, e.g. replicas of the operator


@dataclass
class _FailRule:
    remaining: int
    code: int
    path_contains: str | None
    method: str | None
    user_agent: str | None = None

    def matches(self, method: str, target: str, user_agent: str) -> bool:
        return (
            self.remaining > 0
            and (self.path_contains is None or self.path_contains in target)
            and (self.method is None or self.method.upper() == method)
            and (self.user_agent is None or self.user_agent in user_agent)
        )


@dataclass
class _Route:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    status: bool


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked watch responses
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer

    streaming = False  # set once a chunked watch response has started: errors can no longer be sent

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; FakeApiServer.requests is the log

    def do_GET(self) -> None:
        self.streaming = False
        self.server.fake._serve(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.streaming = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def client_gone(self) -> bool:
        """True when the client closed its side (readable with no data)."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection; tracks connections so stop() can close idle keep-alive ones too."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, fake: FakeApiServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self.socket.setblocking(False)  # accept() after select() must never block the accept loop
        self.conn_lock = threading.Lock()
        self.connections: dict[threading.Thread, socket.socket] = {}

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall on some machines.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run_connection, args=(request, client_address), name="fake-apiserver-conn", daemon=True
        )
        with self.conn_lock:
            self.connections[thread] = request
        thread.start()

    def _run_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self.conn_lock:
                self.connections.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away mid-response is normal for watches; anything else is a bug in the fake.
        if not isinstance(sys.exc_info()[1], OSError):
            self.fake.errors.append(traceback.format_exc())

    def close_connections(self, timeout: float) -> None:
        with self.conn_lock:
            connections = dict(self.connections)
        for sock in connections.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------------------------
# Client configuration (shared with fake_apiserver_process.FakeApiServerProcess)
# ---------------------------------------------------------------------------------------------


def write_kubeconfig(url: str, token: str | None, path: str | os.PathLike[str], namespace: str = "default") -> Path:
    """A kubeconfig for the server at ``url`` (plain http, token user), for ``load_kube_config``."""
    user = {"token": token} if token else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": user}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }
    path = Path(path)
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


def api_client(url: str, token: str | None) -> kubernetes.client.ApiClient:
    """A client for the server at ``url``; the global default configuration is left alone."""
    configuration = kubernetes.client.Configuration(host=url)
    if token:
        configuration.api_key = {"authorization": f"Bearer {token}"}
    return kubernetes.client.ApiClient(configuration)


# ---------------------------------------------------------------------------------------------
# The public server
# ---------------------------------------------------------------------------------------------


class FakeApiServer:
    """A fake Kubernetes API server on 127.0.0.1 (random port), run in background threads.

    Deviations from a real apiserver worth knowing:

    - No authentication beyond a bearer token check (``token=None`` disables it), no RBAC, no
      admission, no OpenAPI/schema validation of bodies (only name/namespace/kind/apiVersion).
    - Namespaces need not exist. Only namespaced resources. JSON only (no protobuf, no gzip).
    - Strategic merge patch is a plain JSON merge patch (lists are replaced, no ``$patch``);
      server-side apply (``application/apply-patch+yaml``) is answered with 415.
    - A write that changes nothing is not a write (like etcd): no new resourceVersion, no event.
    - ``pods`` keep ``status`` on create and on main-resource writes (so tests can set podIP and
      conditions in one call); ``virtualservices`` behave like a CRD with the status subresource.
      Pod deletion is immediate (no grace period) unless the pod has finalizers (or is deleted with
      the Foreground or Orphan policy: then the garbage collector's finalizer holds it a moment).
    - Core and ``events.k8s.io`` events are two separate stores (no conversion between them).
    - Field selectors accept any dotted path; ``timeoutSeconds`` accepts fractions; a LIST with a
      resourceVersion newer than the server's answers 504 at once instead of waiting.
    - Watch selectors follow the watch cache: leaving the selector is DELETED, entering it ADDED.
    """

    def __init__(
        self,
        *,
        bookmark_interval: float = 1.0,
        history_limit: int = 10_000,
        token: str | None = "fake-token",
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.token = token
        self._types = list(resources)
        self._by_path = {(t.group, t.version, t.plural): t for t in self._types}
        self._store = _Store(self._types, history_limit)
        self._api = _Api(self._store)
        self.errors: list[str] = []  # tracebacks of unexpected exceptions inside the server
        self._gc = _GarbageCollector(self._store, self._api, self._types, self.errors)
        self._requests: list[RecordedRequest] = []
        self._fail_rules: list[_FailRule] = []
        self._httpd: _HTTPServer | None = None
        self._accept_thread: threading.Thread | None = None
        self._stop_r: socket.socket | None = None  # wakes the accept loop on stop()
        self._stop_w: socket.socket | None = None
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeApiServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer(self)
        self._stop_r, self._stop_w = socket.socketpair()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="fake-apiserver", daemon=True)
        self._accept_thread.start()
        self._gc.start()
        return self

    def stop(self) -> None:
        """Close the listener, every watch and every connection; returns within about a second."""
        if self._httpd is None or self._stopping:
            return
        self._stopping = True
        self._gc.stop()
        assert self._stop_w is not None and self._stop_r is not None
        self._stop_w.send(b"\0")
        if self._accept_thread is not None:
            self._accept_thread.join(1.0)
        with self._store.lock:
            watchers = list(self._store.watchers)
        for watcher in watchers:
            watcher.abort()
        self._httpd.close_connections(timeout=0.8)
        self._httpd.server_close()
        self._stop_r.close()
        self._stop_w.close()

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        # Blocks in select() on the listener and a stop pipe: no polling interval, instant stop.
        assert self._httpd is not None and self._stop_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._httpd.socket, selectors.EVENT_READ)
            selector.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._stop_r in ready:
                    return
                self._httpd.handle_request()

    # -- client configuration -------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FakeApiServer is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def kubeconfig(self, path: str | os.PathLike[str], namespace: str = "default") -> Path:
        """Write a kubeconfig (plain http, token user) for ``kubernetes.config.load_kube_config``."""
        return write_kubeconfig(self.url, self.token, path, namespace)

    def api_client(self) -> kubernetes.client.ApiClient:
        """A client configured for this server; the global default configuration is left alone."""
        return api_client(self.url, self.token)

    # -- test controls --------------------------------------------------------------------------

    def drop_watches(self, timeout: float = 1.0) -> int:
        """Close every open watch connection abruptly (no terminating chunk). Returns how many."""
        return self._end_watches(lambda w: w.abort(), timeout)

    def expire_watches(self, timeout: float = 1.0) -> int:
        """Send ERROR 410 Expired to every open watch and end it cleanly. Returns how many."""

        def expire(watcher: _Watcher) -> None:
            with self._store.lock:
                message = f"too old resource version: {self._store.compacted_rv} ({self._store.rv})"
                watcher.push(_event_line(ERROR, status_object(410, "Expired", message)))
                watcher.push(_END)

        return self._end_watches(expire, timeout)

    def _end_watches(self, action: Callable[[_Watcher], None], timeout: float) -> int:
        with self._store.lock:
            watchers = list(self._store.watchers)
        for watcher in watchers:
            action(watcher)
        deadline = time.monotonic() + timeout
        for watcher in watchers:  # wait so tests can assert right after the call
            watcher.done.wait(max(0.0, deadline - time.monotonic()))
        return len(watchers)

    def compact(self) -> None:
        """Forget the event history: watches and continue tokens from older RVs get 410."""
        self._store.compact()

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK now to every watch that asked for bookmarks."""
        with self._store.lock:
            for watcher in self._store.watchers:
                if watcher.bookmarks:
                    self._store.bookmark(watcher)

    def fail_next(
        self,
        n: int = 1,
        code: int = 500,
        path_contains: str | None = None,
        method: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with an error Status.

        Matches on path+query (substring), method, and User-Agent (substring: one client of several).
        """
        with self._store.lock:
            self._fail_rules.append(_FailRule(n, code, path_contains, method, user_agent))

    def clear_failures(self) -> None:
        """Forget every ``fail_next`` rule not used up yet."""
        with self._store.lock:
            self._fail_rules.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """(method, path, query, user_agent) of every request so far, oldest first."""
        with self._store.lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._store.lock:
            self._requests.clear()

    def open_watches(self, plural: str | None = None) -> int:
        with self._store.lock:
            rtype = self._resolve(plural) if plural else None
            return sum(1 for w in self._store.watchers if rtype is None or w.rtype is rtype)

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._store.lock:
            return str(self._store.rv)

    def wait_for(self, predicate: Callable[[FakeApiServer], bool], timeout: float = 15.0) -> bool:
        """Block until ``predicate(self)`` holds; re-checked on every write, request and watch open/close."""
        with self._store.changed:
            return self._store.changed.wait_for(lambda: predicate(self), timeout)

    async def wait_for_async(self, predicate: Callable[[FakeApiServer], bool], timeout: float = 5.0) -> bool:
        """``wait_for`` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    # -- direct store access (bypasses the API rules, still produces watch events) --------------

    def put(self, obj: Obj) -> Obj:
        """Store ``obj`` as is (create or overwrite); fills uid/creationTimestamp/namespace if missing."""
        rtype = self._resolve_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        obj = _clone(obj)
        meta = _meta(obj)
        meta.setdefault("namespace", "default")
        with self._store.lock:
            current = self._store.current(rtype, meta["namespace"], meta["name"])
            old = current["metadata"] if current else {}
            meta.setdefault("uid", old.get("uid") or str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", old.get("creationTimestamp") or _now())
            if rtype.generation:
                meta.setdefault("generation", old.get("generation", 1))
            return _clone(self._store.commit(rtype, MODIFIED if current else ADDED, obj, current))

    def get(self, plural: str, namespace: str, name: str) -> Obj | None:
        rtype = self._resolve(plural)
        return _clone(self._store.current(rtype, namespace, name))

    def delete(self, plural: str, namespace: str, name: str) -> Obj | None:
        """Remove at once (ignoring finalizers); returns the final object or None."""
        rtype = self._resolve(plural)
        with self._store.lock:
            current = self._store.current(rtype, namespace, name)
            if current is None:
                return None
            return _clone(self._store.commit(rtype, DELETED, _clone(current), current))

    def list(self, plural: str, namespace: str | None = None) -> list[Obj]:
        rtype = self._resolve(plural)
        with self._store.lock:
            items = sorted(self._store.objects[rtype].items())
            return [_clone(obj) for key, obj in items if namespace is None or key[0] == namespace]

    def _resolve(self, plural: str) -> ResourceType:
        """``pods``, ``virtualservices`` or group-qualified ``events.events.k8s.io``; first registered wins."""
        for rtype in self._types:
            if plural in (rtype.plural, f"{rtype.plural}.{rtype.group}"):
                return rtype
        raise KeyError(f"unknown resource {plural!r}")

    def _resolve_kind(self, api_version: str, kind: str) -> ResourceType:
        for rtype in self._types:
            if (rtype.api_version, rtype.kind) == (api_version, kind):
                return rtype
        raise KeyError(f"unknown apiVersion/kind {api_version}/{kind}")

    # -- request handling -----------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        method = handler.command
        body = handler.read_body()  # always read it, so the keep-alive connection stays in sync
        user_agent = handler.headers.get("User-Agent") or ""
        with self._store.lock:
            self._requests.append(RecordedRequest(method, parts.path, query, user_agent))
            self._store.changed.notify_all()
        try:
            self._check_injected_failure(method, handler.path, user_agent)
            self._check_auth(handler)
            self._dispatch(handler, method, parts.path, query, body)
        except OSError:  # the client went away, or stop() closed the connection
            handler.close_connection = True
        except Exception as error:  # StatusError is the normal path; anything else is a bug in the fake
            if not isinstance(error, StatusError):
                self.errors.append(traceback.format_exc())
                error = StatusError(500, traceback.format_exc())
            if handler.streaming:
                handler.close_connection = True  # mid-stream: nothing sensible can be sent any more
            else:
                handler.send_json(error.code, error.status)

    def _check_injected_failure(self, method: str, target: str, user_agent: str) -> None:
        with self._store.lock:
            rule = next((r for r in self._fail_rules if r.matches(method, target, user_agent)), None)
            if rule is None:
                return
            rule.remaining -= 1
            if rule.remaining == 0:
                self._fail_rules.remove(rule)
        raise StatusError(rule.code, f"injected failure ({rule.code}) for {method} {target}")

    def _check_auth(self, handler: _Handler) -> None:
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            raise StatusError(401, "Unauthorized")

    def _dispatch(self, handler: _Handler, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if method == "GET" and (discovery := self._discovery(path)) is not None:
            handler.send_json(200, discovery)
            return
        route = self._route(path)
        dry_run = query.get("dryRun") == "All"
        rtype, ns, name = route.rtype, route.namespace, route.name
        if name is None:
            if method == "GET" and query.get("watch") in _TRUE:
                self._watch(handler, rtype, ns, query)
            elif method == "GET":
                handler.send_json(200, self._api.list(rtype, ns, query))
            elif method == "POST" and ns is not None:
                handler.send_json(201, self._api.create(rtype, ns, self._json_object(body), dry_run))
            elif method == "DELETE" and ns is not None:
                handler.send_json(200, self._delete_collection(rtype, ns, query, dry_run))
            else:
                raise StatusError(405, "the server does not allow this method on the requested resource")
            return
        assert ns is not None
        if method == "GET":
            obj = self._store.current(rtype, ns, name)
            if obj is None:
                raise _not_found(rtype, name)
            handler.send_json(200, obj)
        elif method == "PUT":
            handler.send_json(200, self._api.update(rtype, ns, name, self._json_object(body), route.status, dry_run))
        elif method == "PATCH":
            content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
            patch = self._json(body)
            handler.send_json(200, self._api.patch(rtype, ns, name, content_type, patch, route.status, dry_run))
        elif method == "DELETE" and not route.status:
            options = self._json_object(body) if body.strip() else {}
            for param in ("propagationPolicy", "orphanDependents"):  # the client sends them in the query
                if param in query and param not in options:
                    options[param] = query[param] if param == "propagationPolicy" else query[param] in _TRUE
            handler.send_json(200, self._api.delete(rtype, ns, name, options, dry_run))
        else:
            raise StatusError(405, "the server does not allow this method on the requested resource")

    def _route(self, path: str) -> _Route:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise StatusError(404, "the server could not find the requested resource")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        rtype = self._by_path.get((group, version, rest[0]))
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if rtype is None or len(rest) > 3 or sub not in (None, "status") or (namespace is None and name):
            raise StatusError(404, "the server could not find the requested resource")
        return _Route(rtype, namespace, name, sub == "status")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError as error:
            raise StatusError(400, f"couldn't decode the request body as JSON: {error}") from None

    def _json_object(self, body: bytes) -> Obj:
        value = self._json(body)
        if not isinstance(value, dict):
            raise StatusError(422, f"the request body must be a JSON object, not {type(value).__name__}")
        return value

    def _delete_collection(self, rtype: ResourceType, namespace: str, query: dict[str, str], dry_run: bool) -> Obj:
        with self._store.lock:
            listed = self._api.list(rtype, namespace, {k: v for k, v in query.items() if k != "limit"})
            items = [self._api.delete(rtype, namespace, _key(o)[1], None, dry_run) for o in listed["items"]]
        return {**listed, "items": items}

    def _discovery(self, path: str) -> Obj | None:
        path = path.rstrip("/")
        if path == "/version":
            return {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            groups = sorted({(t.group, t.version) for t in self._types if t.group})
            entries = [{"groupVersion": f"{g}/{v}", "version": v} for g, v in groups]
            items = [{"name": e["groupVersion"].split("/")[0], "versions": [e], "preferredVersion": e} for e in entries]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": items}
        types = [t for t in self._types if path == (f"/apis/{t.api_version}" if t.group else f"/api/{t.version}")]
        if not types:
            return None
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources: list[Obj] = []
        for t in types:
            resources.append({"name": t.plural, "singularName": t.kind.lower(), "namespaced": True, "kind": t.kind})
            resources[-1]["verbs"] = verbs
            if t.status_subresource:
                resources.append({"name": f"{t.plural}/status", "namespaced": True, "kind": t.kind})
                resources[-1]["verbs"] = ["get", "patch", "update"]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": types[0].api_version,
            "resources": resources,
        }

    # -- watch streaming ------------------------------------------------------------------------

    def _watch(self, handler: _Handler, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> None:
        matches = self._api.matcher(namespace, query)  # bad selectors fail before the stream starts
        timeout = _int_param(query, "timeoutSeconds")
        bookmarks = query.get("allowWatchBookmarks") in _TRUE
        initial_events = query.get("sendInitialEvents") in _TRUE
        rv_param = "" if initial_events else query.get("resourceVersion", "")
        if rv_param not in ("", "0"):
            _parse_rv(rv_param)  # a malformed RV is a 400, before the stream starts
        # Headers go out before the watch is registered: open_watches() counts only started streams.
        handler.start_chunked()
        try:
            watcher = self._store.open_watch(rtype, matches, rv_param, bookmarks)
        except StatusError as error:  # 410: like the real server, one ERROR event, then end of stream
            handler.write_chunk(_event_line(ERROR, error.status))
            handler.write_chunk(b"")
            return
        if initial_events and bookmarks:
            self._store.bookmark(watcher, {"k8s.io/initial-events-end": "true"})
        try:
            self._stream(handler, watcher, timeout)
        finally:
            self._store.close_watch(watcher)
            watcher.close()

    def _stream(self, handler: _Handler, watcher: _Watcher, timeout: float | None) -> None:
        """Write queued events until timeout, END, abort, stop or the client closing its side."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        interval = self.bookmark_interval if watcher.bookmarks and self.bookmark_interval > 0 else None
        next_bookmark = time.monotonic() + interval if interval else None
        with selectors.DefaultSelector() as selector:
            selector.register(watcher.wake_r, selectors.EVENT_READ)
            selector.register(handler.connection, selectors.EVENT_READ)
            while True:
                if self._flush(handler, watcher):
                    return
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    handler.write_chunk(b"")  # clean end: the client sees the stream finish
                    return
                if interval is not None and next_bookmark is not None and now >= next_bookmark:
                    self._store.bookmark(watcher)
                    next_bookmark = now + interval
                    continue
                waits = [t - now for t in (deadline, next_bookmark) if t is not None]
                for key, _ in selector.select(min(waits) if waits else None):
                    if key.fileobj is watcher.wake_r:
                        watcher.clear_wakeups()
                    elif handler.client_gone():
                        handler.close_connection = True
                        return
                    else:
                        selector.unregister(handler.connection)  # pipelined bytes: stop watching the socket

    def _flush(self, handler: _Handler, watcher: _Watcher) -> bool:
        """Write queued lines; True when the stream is over (aborted or END)."""
        while True:
            if watcher.aborted:
                # Simulated network drop: no terminating chunk, the client sees a truncated response.
                handler.close_connection = True
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                return True
            try:
                line = watcher.items.popleft()
            except IndexError:
                return False
            handler.write_chunk(line)
            if line == _END:
                return True


__all__ = [
    "DEFAULT_RESOURCES",
    "FakeApiServer",
    "RecordedRequest",
    "ResourceType",
    "StatusError",
    "api_client",
    "field_matcher",
    "json_patch",
    "label_matcher",
    "merge_patch",
    "status_object",
    "write_kubeconfig",
]
