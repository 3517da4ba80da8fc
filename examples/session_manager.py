#!/usr/bin/env python3
"""Pin one session (a call, a game match) to its worker pod through the ingress Envoys.

For a new session it creates a VirtualService whose only endpoint is the session's worker pod,
waits until the operator reports it Ready (every selected Envoy runs it and the pod is Ready),
prints the route the client should use, and deletes the VirtualService when the session ends.

  python examples/session_manager.py abc123 --worker-port 2001 [--port 3000]
  route 10.0.0.5:3000            <- on stdout once Ready: give the client this address
  (stdin closes, SIGTERM/SIGINT or --hold runs out: the session ends, the route is deleted)

The worker pod is found by label: by default `session=<SESSION>` (whoever schedules the
session labels its pod, e.g. `kubectl label pod worker-7 session=abc123`). --worker-label
picks another label, e.g. statefulset.kubernetes.io/pod-name=worker-3 for a StatefulSet pod
by name; it must match exactly one running pod. The VirtualService is named session-<SESSION>;
its listener and cluster likewise. It is owned by the worker pod (an ownerReference), so even
if this program is killed with SIGKILL, Kubernetes deletes the route when the pod goes.
Without --port the operator picks the port; the printed port is always the one the status reports.

It is built on xds_operator.sessions.SessionRoutes, which an application can use directly to
open many sessions' routes at once over one watch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from xds_operator.sessions import Route, RouteError, SessionRoutes
from xds_operator.sessions.manifest import SESSION_ID


def label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def session_id(text: str) -> str:
    if not SESSION_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use lowercase letters, digits and '-' (at most 52)")
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("session", type=session_id, help="the session id (lowercase letters, digits, '-')")
    parser.add_argument(
        "--port", type=port, help="the UDP port the Envoys listen on for this session (default: the operator picks)"
    )
    parser.add_argument("--worker-port", type=port, default=2001, help="the UDP port of the worker (default 2001)")
    parser.add_argument(
        "--namespace",
        default="default",
        help="of the VirtualService, the worker pod and the ingress Envoys "
        "(a VirtualService selects proxies in its own namespace only)",
    )
    parser.add_argument(
        "--worker-label",
        type=label,
        action="append",
        metavar="KEY=VALUE",
        help="the worker pod's label (default session=SESSION)",
    )
    parser.add_argument(
        "--proxy-selector",
        type=label,
        action="append",
        metavar="KEY=VALUE",
        help="which Envoys (default app=envoy-ingress)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Ready (default 30)")
    parser.add_argument(
        "--hold", type=float, metavar="SECONDS", help="end the session after SECONDS (default: when stdin closes)"
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)"
    )
    return parser.parse_args(argv)


def api_client(kubeconfig: str | None) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration)


def stdin_closed(loop: asyncio.AbstractEventLoop) -> asyncio.Future[str]:
    """Done when stdin reaches EOF (whatever is written is ignored). A daemon thread: it may block forever."""
    closed: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        for _ in sys.stdin:
            pass
        with contextlib.suppress(RuntimeError):  # the loop is closed: the session ended otherwise
            loop.call_soon_threadsafe(lambda: closed.done() or closed.set_result("stdin closed"))

    threading.Thread(target=read, name="stdin", daemon=True).start()
    return closed


async def first(*waits: asyncio.Future[object]) -> None:
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)


async def hold(args: argparse.Namespace, route: Route, ended: asyncio.Future[str]) -> int:
    """Until the session ends: --hold runs out or stdin closes (0), a signal (0), the route deleted by others (1)."""
    loop = asyncio.get_running_loop()
    held = asyncio.ensure_future(asyncio.sleep(args.hold)) if args.hold is not None else stdin_closed(loop)
    gone = asyncio.ensure_future(route.wait_deleted())
    try:
        await first(held, ended, gone)
    finally:
        held.cancel()
        gone.cancel()
    if gone.done() and not gone.cancelled():  # the garbage collector (the worker pod went), or anyone
        print(f"session {args.session}: {route.namespace}/{route.name} was deleted (is the worker pod gone?)",
              file=sys.stderr)  # fmt: skip
        return 1
    if ended.done():
        print(f"session {args.session}: {ended.result()}", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace, api: client.ApiClient) -> int:
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[str] = loop.create_future()  # SIGTERM or SIGINT: end the session
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda name=signum.name: ended.done() or ended.set_result(name))
    where = f"VirtualService {args.namespace}/session-{args.session}"
    code = 1
    try:
        async with SessionRoutes(
            api,
            namespace=args.namespace,
            proxy_selector=dict(args.proxy_selector or [("app", "envoy-ingress")]),
            manager=f"session-{args.session}",  # the watch sees this session's route only
            max_requests=2,
        ) as routes:
            opening = asyncio.ensure_future(
                routes.open(
                    args.session,
                    worker_label=dict(args.worker_label) if args.worker_label else None,
                    worker_port=args.worker_port,
                    port=args.port,
                    timeout=args.timeout,
                )
            )
            await first(opening, ended)
            if not opening.done():  # a signal before Ready: the open gives up and deletes what it created
                await routes.close(args.session)
                await asyncio.gather(opening, return_exceptions=True)
                print(f"session {args.session}: {ended.result()}", file=sys.stderr)
                code = 0
            else:
                route = opening.result()
                print(f"route {route.address}", flush=True)
                code = await hold(args, route, ended)
                try:
                    await route.close()
                except RouteError as error:
                    print(f"cannot delete {where} (the worker pod's deletion will): {error}", file=sys.stderr)
                    return 1
    except RouteError as error:  # not Ready in time, no worker pod, a request refused: what was created is gone
        print(f"session {args.session}: {error}", file=sys.stderr)
        code = 1
    print(f"session {args.session} ended: {where} deleted", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        api = api_client(args.kubeconfig)
    except (ConfigException, OSError) as error:
        where = (
            f"--kubeconfig {args.kubeconfig}" if args.kubeconfig else "in-cluster config, $KUBECONFIG or ~/.kube/config"
        )
        print(f"cannot load Kubernetes credentials from {where}: {error}", file=sys.stderr)
        return 1
    # "created ...", "not Ready yet: <reason>: <message>" on stderr, as the session progresses
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with api:
        return asyncio.run(run(args, api))


if __name__ == "__main__":
    sys.exit(main())
