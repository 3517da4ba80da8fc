"""SessionRoutes: open and close many sessions' routes at once from asyncio, with one shared watch.

    async with SessionRoutes(api, namespace="media", proxy_selector={"app": "envoy-ingress"}) as routes:
        route = await routes.open("abc123", worker_port=2001)     # Ready: every Envoy runs it
        print(route.address)                                      # 10.0.0.5:31000, from status.listeners
        await route.close()

The kubernetes client is synchronous: its requests run in a bounded thread pool (`max_requests`), and
one reflector thread lists-then-watches the manager's VirtualServices (label-selected) and hands every
event to the event loop, where each waiting open() is woken by name. So a thousand concurrent opens
cost a thousand creates (and pod lookups), not a thousand watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from xds_operator.sessions.manifest import (
    GROUP,
    MANAGER_LABEL,
    PLURAL,
    SESSION_LABEL,
    VERSION,
    Protocol,
    check_label_value,
    check_session_id,
    condition,
    label_selector,
    listener_status,
    pick,
    route_name,
    serving,
    virtual_service,
)
from xds_operator.sources.kubernetes.reflector import Changed, Event, Reflector, Synced

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = (10.0, 30.0)  # connect, read: a hung API server cannot hold a pool thread forever
MAX_WORKER_PODS = 16  # pods listed per worker label: a session's label should match one
DRAIN_TIMEOUT = 60.0  # how long leaving the context waits for opens still in flight to clean up


class RouteError(Exception):
    """A session's route could not be opened or closed; the message says which and why."""

    def __init__(self, session: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.session = session
        self.status = status  # the HTTP status, when the API server refused a request


class WorkerPodNotFound(RouteError):
    """No serving pod carries the worker label (nothing was created)."""


class RouteNotReady(RouteError):
    """Not Ready in time, or invalid (the VirtualService was deleted). `reason`/`detail`: the Ready condition's."""

    def __init__(self, session: str, message: str, reason: str, detail: str) -> None:
        super().__init__(session, message)
        self.reason, self.detail = reason, detail


class RouteDeleted(RouteError):
    """Someone else deleted the VirtualService while open() waited (the garbage collector, when the pod went)."""


@dataclass(frozen=True)
class Route:
    """A Ready route: where the session's client sends its traffic."""

    session: str
    namespace: str
    name: str  # of the VirtualService, its listener and its cluster
    uid: str  # of the VirtualService
    port: int  # as status.listeners reports it (the operator's choice when open() was given no port)
    addresses: tuple[str, ...]  # pod IPs of the proxies that run it
    worker: str  # the worker pod's name
    _routes: SessionRoutes = field(repr=False, compare=False)

    @property
    def address(self) -> str:
        """`ip:port` of one proxy, picked by the session id (sessions spread over the proxies)."""
        return f"{pick(self.addresses, self.session)}:{self.port}"

    async def close(self) -> None:
        """Delete the route (nothing happens if it is gone already)."""
        await self._routes.close(self.session)

    async def wait_deleted(self) -> None:
        """Return once the VirtualService is gone: closed, or deleted by anyone (its pod's deletion)."""
        await self._routes.wait_deleted(self)


class _Session:
    """One route being opened or open; updated from the shared watch on the event loop."""

    def __init__(self, session: str, worker: str) -> None:
        self.session, self.name, self.worker = session, route_name(session), worker
        self.uid: str | None = None  # once created
        self.obj: Mapping[str, Any] | None = None  # the latest object of that name the watch showed
        self.deleted_uid: str | None = None  # the last uid the watch showed deleted
        self.seen = False  # the watch has shown our object
        self.route: Route | None = None  # once Ready and handed out
        self.closing = False  # close() was called while it was being opened
        self.changed = asyncio.Event()
        self.done = asyncio.Event()  # deleted and out of the table

    @property
    def deleted(self) -> bool:
        return self.uid is not None and self.deleted_uid == self.uid


class SessionRoutes:
    """Routes for many sessions in one namespace, opened by one manager.

    `manager` labels every VirtualService opened here (`servicemesh.l7mp.io/session-manager`); the
    shared watch selects that label, and `sweep()` deletes what an earlier run under the same name
    left. Give each application replica its own stable name (a StatefulSet pod's name) so replicas
    neither watch nor sweep each other's routes. `api` is the caller's ApiClient; size its pool
    (`Configuration.connection_pool_maxsize`) to at least `max_requests + 1`: one connection holds the watch.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str,
        proxy_selector: Mapping[str, str],
        manager: str = "session-routes",
        max_requests: int = 8,
        max_sessions: int = 10_000,
    ) -> None:
        if not proxy_selector:
            raise ValueError("proxy_selector must name at least one label: it picks the Envoys")
        self.namespace = namespace
        self.proxy_selector = dict(proxy_selector)
        self.manager = check_label_value("manager", manager)
        self.max_sessions = max_sessions
        self._objects = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._max_requests = max(1, max_requests)
        self._sessions: dict[str, _Session] = {}  # by VirtualService name
        self._executor: ThreadPoolExecutor | None = None
        self._reflector: Reflector | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._drained = asyncio.Event()
        self._watch_error: str | None = None  # the last failure of the shared watch, for timeout messages

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> SessionRoutes:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(self._max_requests, thread_name_prefix="session-routes")
        selector = f"{MANAGER_LABEL}={self.manager}"
        listing = functools.partial(
            self._objects.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, label_selector=selector
        )

        def list_call(**params: Any) -> Any:
            try:
                response = listing(**params)
            except ApiException as error:
                self._watch_error = f"HTTP {error.status} {error.reason}: {_status_message(error)}"
                raise
            self._watch_error = None
            return response

        self._reflector = Reflector(f"session routes {self.namespace}/{selector}", list_call, self._sink)
        self._reflector.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Delete every route still open, let opens in flight clean up, stop the watch."""
        self._closing = True
        for session in list(self._sessions.values()):
            session.changed.set()  # opens in flight give up and delete what they created
        opened = [s.session for s in self._sessions.values() if s.route is not None]
        results = await asyncio.gather(*(self.close(session) for session in opened), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for state in [s for s in self._sessions.values() if s.route is not None]:
            self._remove(state)  # its delete failed (logged below): the garbage collector is left to it
        if self._sessions:
            self._drained.clear()
            try:
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("session routes: %d opens still in flight after %gs", len(self._sessions), DRAIN_TIMEOUT)
        assert self._reflector is not None and self._executor is not None
        await asyncio.to_thread(self._reflector.stop)
        self._executor.shutdown(wait=False)
        for failure in failures:
            log.error("session routes: %s", failure)
        if failures and not any(exc):
            raise failures[0]

    # -- the API --------------------------------------------------------------------------------

    async def open(
        self,
        session: str,
        *,
        worker_port: int,
        worker_label: Mapping[str, str] | None = None,
        port: int | None = None,
        protocol: Protocol = "udp",
        timeout: float = 30.0,
    ) -> Route:
        """Create the session's route to its worker pod and return it once Ready.

        The worker pod is the one pod labelled `worker_label` (default `session=<session>`). Without
        `port` the operator assigns one; the route's port is always read from the status. On any
        failure or cancellation, what was created is deleted before the error is raised:
        WorkerPodNotFound, RouteNotReady (with the Ready condition's reason; also at once when the
        spec is Invalid), RouteDeleted, or RouteError (the API refused a request).
        """
        check_session_id(session)
        for what, value in (("worker_port", worker_port), ("port", port)):
            if value is not None and not 1 <= value <= 65535:
                raise ValueError(f"{what} {value} is not a port (1-65535)")
        loop = self._running()
        name = route_name(session)
        if self._closing:
            raise RouteError(session, f"session {session}: the session routes are closing")
        if name in self._sessions:
            raise RouteError(session, f"session {session} is already open (or being opened) here")
        if len(self._sessions) >= self.max_sessions:
            raise RouteError(session, f"session {session}: {self.max_sessions} sessions are open (max_sessions)")
        labels = dict(worker_label or {"session": session})
        deadline = loop.time() + timeout
        state = self._sessions[name] = _Session(session, worker="")
        try:
            pod = await self._worker_pod(session, labels)
            state.worker = pod["metadata"]["name"]
            body = virtual_service(
                session,
                namespace=self.namespace,
                manager=self.manager,
                proxy_selector=self.proxy_selector,
                worker_label=labels,
                worker_port=worker_port,
                worker_pod=pod,
                port=port,
                protocol=protocol,
            )
            await self._create(state, body)
            log.info("session %s: created VirtualService %s/%s", session, self.namespace, name)
            route = await self._until_ready(state, deadline, timeout)
        except BaseException:
            await self._forget(state)
            raise
        state.route = route
        return route

    async def close(self, session: str) -> None:
        """Delete a session's route; nothing happens if it is not open. A session still being
        opened is given up (its open() raises RouteError) and deleted."""
        state = self._sessions.get(route_name(session))
        if state is None:
            return
        if state.route is None:  # open() is still running: it deletes what it created on the way out
            state.closing = True
            state.changed.set()
            await state.done.wait()
            return
        state.closing = True  # its DELETED event is no news
        try:
            await self._delete(state)
        except BaseException:
            state.closing = False
            raise
        self._remove(state)

    async def wait_deleted(self, route: Route) -> None:
        state = self._sessions.get(route.name)
        if state is not None and state.uid == route.uid:
            await state.done.wait()

    async def sweep(self) -> list[str]:
        """Delete every VirtualService labelled with this manager that is not open here; their names.

        Run it once at startup under a stable `manager` name: it removes the routes an earlier run
        left behind when it died while their worker pods lived on (the garbage collector only acts
        when the pod goes).
        """
        selector = f"{MANAGER_LABEL}={self.manager}"
        listed = await self._request("", self._objects.list_namespaced_custom_object, GROUP, VERSION,
                                     self.namespace, PLURAL, label_selector=selector)  # fmt: skip
        swept = []
        for obj in listed.get("items") or ():
            meta = obj.get("metadata") or {}
            if meta.get("name") in self._sessions:
                continue
            await self._delete_object(str((meta.get("labels") or {}).get(SESSION_LABEL, "")), meta["name"], meta["uid"])
            swept.append(meta["name"])
        return swept

    @property
    def open_sessions(self) -> list[str]:
        return [s.session for s in self._sessions.values() if s.route is not None]

    # -- the shared watch -------------------------------------------------------------------------

    def _sink(self, event: Event) -> None:
        """Called in the reflector's thread: hand the event to the loop, in order."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._apply, event)

    def _apply(self, event: Event) -> None:
        if isinstance(event, Synced):
            listed = {_name(obj): obj for obj in event.objects}
            for state in list(self._sessions.values()):
                obj = listed.get(state.name)
                if obj is None and state.seen:  # listed after we saw it: it is gone
                    self._deleted(state, state.uid)
                elif obj is not None:
                    self._updated(state, obj)
            return
        assert isinstance(event, Changed)
        changed = self._sessions.get(_name(event.object))
        if changed is None:  # not (or no longer) ours: a leftover of an earlier run, for sweep()
            return
        if event.type == "DELETED":
            self._deleted(changed, _uid(event.object))
        else:
            self._updated(changed, event.object)

    def _updated(self, state: _Session, obj: Mapping[str, Any]) -> None:
        state.obj = obj
        state.seen = state.seen or (state.uid is not None and _uid(obj) == state.uid)
        state.changed.set()

    def _deleted(self, state: _Session, uid: str | None) -> None:
        state.deleted_uid = uid
        state.changed.set()
        if state.deleted and state.route is not None:
            if not state.closing:  # deleted behind our back: the garbage collector, kubectl
                log.warning("session %s: VirtualService %s/%s was deleted", state.session, self.namespace, state.name)
            self._remove(state)

    # -- steps of open ----------------------------------------------------------------------------

    async def _worker_pod(self, session: str, labels: Mapping[str, str]) -> Mapping[str, Any]:
        selector = label_selector(labels)
        listed = await self._request(session, self._core.list_namespaced_pod, self.namespace,
                                     label_selector=selector, limit=MAX_WORKER_PODS)  # fmt: skip
        pods: list[Mapping[str, Any]] = [pod for pod in listed.get("items") or () if serving(pod)]
        where = f"pod labelled {selector} in namespace {self.namespace}"
        if not pods:
            raise WorkerPodNotFound(session, f"session {session}: no running {where} (label the session's worker pod)")
        if len(pods) > 1 or (listed.get("metadata") or {}).get("continue"):
            names = ", ".join(sorted(_name(pod) for pod in pods))
            raise RouteError(session, f"session {session}: more than one {where} ({names}): label exactly one")
        return pods[0]

    async def _create(self, state: _Session, body: dict[str, Any]) -> None:
        call = functools.partial(self._objects.create_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                 PLURAL, body)  # fmt: skip
        request = asyncio.ensure_future(self._request(state.session, call))
        try:
            created = await asyncio.shield(request)
        except asyncio.CancelledError:
            # The request runs on in its thread and may still create the object: wait, so it is deleted.
            try:
                created = await request
            except Exception:
                raise asyncio.CancelledError() from None
            state.uid = _uid(created)
            raise
        state.uid = _uid(created)
        if state.obj is not None:  # the watch may have shown it before the answer came
            self._updated(state, state.obj)

    async def _until_ready(self, state: _Session, deadline: float, timeout: float) -> Route:
        loop = self._running()
        last: tuple[str, str] | None = None
        while True:
            if self._closing or state.closing:
                raise RouteError(state.session, f"session {state.session}: closed before it was Ready")
            if state.deleted:
                raise RouteDeleted(
                    state.session,
                    f"VirtualService {self.namespace}/{state.name} was deleted while waiting for Ready "
                    f"(was its worker pod {state.worker} deleted?)",
                )
            obj = state.obj if state.seen else None
            if obj is not None:
                ready = condition(obj, "Ready")
                found = listener_status(obj, state.name)
                if ready.get("status") == "True" and found is not None:
                    assert state.uid is not None
                    port, addresses = found
                    return Route(state.session, self.namespace, state.name, state.uid, port, addresses,
                                 state.worker, self)  # fmt: skip
                if ready.get("reason") == "Invalid":  # our own spec: it cannot become valid by waiting
                    detail = str(condition(obj, "Accepted").get("message") or ready.get("message"))
                    raise self._not_ready(state, "Invalid", detail, "is invalid")
                if ready and (ready.get("reason"), ready.get("message")) != last:
                    last = (str(ready.get("reason")), str(ready.get("message")))
                    log.info("session %s: not Ready yet: %s: %s", state.session, *last)
            remaining = deadline - loop.time()
            if remaining <= 0:
                reason, detail = self._why_not_ready(state)
                raise self._not_ready(state, reason, detail, f"not Ready after {timeout:g}s")
            state.changed.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that comes as the
            # event is set, and a cancelled open() would then wait on for Ready.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await state.changed.wait()

    def _why_not_ready(self, state: _Session) -> tuple[str, str]:
        obj = state.obj if state.seen else None
        if obj is None:
            if self._watch_error:
                return "NotWatched", f"the watch on VirtualServices fails: {self._watch_error}"
            return "NotSeen", "the watch has not shown the VirtualService yet"
        ready = condition(obj, "Ready")
        if not ready:
            return "NoStatus", "no Ready condition yet (is the operator running and watching this namespace?)"
        if ready.get("status") == "True":
            return "NoAddress", f"Ready, but status.listeners names no port and proxy address for {state.name}"
        return str(ready.get("reason")), str(ready.get("message"))

    def _not_ready(self, state: _Session, reason: str, detail: str, what: str) -> RouteNotReady:
        message = f"VirtualService {self.namespace}/{state.name} {what}: {reason}: {detail}"
        return RouteNotReady(state.session, message, reason, detail)

    async def _forget(self, state: _Session) -> None:
        """open() failed or was cancelled: delete what it created (even when cancelled again meanwhile)."""
        try:
            if state.uid is not None and not state.deleted:
                await asyncio.shield(self._delete(state))
        except asyncio.CancelledError:
            raise
        except RouteError as error:
            log.error("%s", error)
        finally:
            self._remove(state)

    # -- requests ---------------------------------------------------------------------------------

    async def _delete(self, state: _Session) -> None:
        if state.uid is not None:
            await self._delete_object(state.session, state.name, state.uid)
            log.info("session %s: deleted VirtualService %s/%s", state.session, self.namespace, state.name)

    async def _delete_object(self, session: str, name: str, uid: str) -> None:
        """Delete that object (the uid precondition spares a successor of the same name); gone already is fine."""
        try:
            await self._request(session, self._objects.delete_namespaced_custom_object, GROUP, VERSION,
                                self.namespace, PLURAL, name, body={"preconditions": {"uid": uid}})  # fmt: skip
        except RouteError as error:
            if error.status not in (404, 409):  # 409: the precondition failed, it is someone else's now
                raise

    async def _request(self, session: str, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API request in the pool; the answer's JSON, or RouteError naming the request and the reason."""
        assert self._executor is not None
        what = getattr(call, "__name__", None) or getattr(getattr(call, "func", None), "__name__", "request")

        def run() -> dict[str, Any]:
            response = call(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            try:
                body: dict[str, Any] = json.loads(response.data or b"{}")
                return body
            finally:
                response.release_conn()

        try:
            return await self._running().run_in_executor(self._executor, run)
        except ApiException as error:
            message = f"session {session}: {what} failed: HTTP {error.status} {error.reason}: {_status_message(error)}"
            raise RouteError(session, message, error.status) from None
        except (OSError, urllib3.exceptions.HTTPError) as error:  # no connection, a timeout
            raise RouteError(session, f"session {session}: {what} failed: {error}") from None

    def _remove(self, state: _Session) -> None:
        if self._sessions.get(state.name) is state:
            del self._sessions[state.name]
        state.done.set()
        if not self._sessions:
            self._drained.set()

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._executor is None:
            raise RuntimeError("use SessionRoutes as `async with SessionRoutes(...) as routes:`")
        return self._loop


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def _status_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", "")) or str(error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)
