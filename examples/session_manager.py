#!/usr/bin/env python3
"""Pin one session (a call, a game match) to its worker pod through the ingress Envoys.

For a new session it creates a VirtualService whose only endpoint is the session's worker pod,
waits until the operator reports it Ready (every selected Envoy runs it and the pod is Ready),
prints the route the client should use, and deletes the VirtualService when the session ends.

  python examples/session_manager.py abc123 --port 3000 --worker-port 2001
  route 10.0.0.5:3000            <- on stdout once Ready: give the client this address
  (stdin closes, SIGTERM/SIGINT or --hold runs out: the session ends, the route is deleted)

The worker pod is found by label: by default `session=<SESSION>` (whoever schedules the
session labels its pod, e.g. `kubectl label pod worker-7 session=abc123`). --worker-label
picks another label, e.g. statefulset.kubernetes.io/pod-name=worker-3 for a StatefulSet pod
by name. The VirtualService is named session-<SESSION>; its listener and cluster likewise.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
import zlib
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

GROUP, VERSION, PLURAL = "servicemesh.l7mp.io", "v1", "virtualservices"
SESSION_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")  # becomes part of a DNS-1123 object name


class SessionEnded(Exception):
    """SIGTERM or SIGINT: end the session (the route is deleted on the way out)."""


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


def virtual_service(args: argparse.Namespace) -> dict[str, Any]:
    name = f"session-{args.session}"
    worker = dict(args.worker_label or [("session", args.session)])
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": args.namespace, "labels": {"session": args.session}},
        "spec": {
            "selector": dict(args.proxy_selector or [("app", "envoy-ingress")]),
            "listeners": [
                {
                    "name": name,
                    "udp": {
                        "port": args.port,
                        "cluster": {
                            "name": name,
                            "service_discovery": "eds",  # the pod's IP changes only the endpoints, not the listener
                            "endpoints": [{"name": "worker", "host": {"selector": worker}, "port": args.worker_port}],
                        },
                    },
                }
            ],
        },
    }


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition, if it is about the object's current generation."""
    generation = obj.get("metadata", {}).get("generation")
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("observedGeneration") == generation:
            return condition
    return {}


def wait_ready(objects: client.CustomObjectsApi, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Watch the VirtualService until its Ready condition is True; the object then, or TimeoutError."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            for event in watch.Watch().stream(
                objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                timeout_seconds=max(1, int(remaining)),
            ):
                obj = event["object"]
                if event["type"] == "DELETED":
                    raise RuntimeError(f"VirtualService {namespace}/{name} was deleted while waiting")
                condition = ready_condition(obj)
                if condition.get("status") == "True":
                    return obj
                if condition and condition.get("message") != last.get("message"):
                    print(f"not ready yet: {condition.get('reason')}: {condition.get('message')}", file=sys.stderr)
                last = condition or last
                if time.monotonic() > deadline:
                    break
        except ApiException as error:  # the watch broke: try again until the deadline
            print(f"watch failed (HTTP {error.status}); watching again", file=sys.stderr)
            time.sleep(0.5)
    why = (
        f"{last.get('reason')}: {last.get('message')}" if last else "no Ready condition yet (is the operator running?)"
    )
    raise TimeoutError(f"VirtualService {namespace}/{name} not Ready after {timeout:g}s: {why}")


def route(obj: dict[str, Any], listener: str, session: str) -> str:
    """host:port of one proxy serving the listener (sessions spread over the proxies by their id)."""
    for status in (obj.get("status") or {}).get("listeners") or []:
        if status.get("name") == listener and status.get("addresses"):
            addresses = status["addresses"]
            return f"{addresses[zlib.crc32(session.encode()) % len(addresses)]}:{status['port']}"
    raise RuntimeError(f"Ready, but status.listeners names no proxy address for {listener}")


def hold(seconds: float | None) -> None:
    """Until the session ends: `seconds` pass, or (without --hold) stdin closes."""
    if seconds is not None:
        time.sleep(seconds)
    else:
        for _ in sys.stdin:  # whatever is written is ignored; EOF ends the session
            pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("session", type=session_id, help="the session id (lowercase letters, digits, '-')")
    parser.add_argument("--port", type=port, required=True, help="the UDP port the Envoys listen on for this session")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config(config_file=args.kubeconfig)
    except (ConfigException, OSError) as error:
        where = (
            f"--kubeconfig {args.kubeconfig}" if args.kubeconfig else "in-cluster config, $KUBECONFIG or ~/.kube/config"
        )
        print(f"cannot load Kubernetes credentials from {where}: {error}", file=sys.stderr)
        return 1

    objects = client.CustomObjectsApi()
    body = virtual_service(args)
    name = body["metadata"]["name"]
    try:
        objects.create_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, body)
    except ApiException as error:
        print(
            f"cannot create VirtualService {args.namespace}/{name}: HTTP {error.status} {error.reason}", file=sys.stderr
        )
        return 1
    print(f"session {args.session}: created VirtualService {args.namespace}/{name}", file=sys.stderr)

    def end(signum: int, frame: object) -> None:
        raise SessionEnded(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, end)  # from here on, every way out deletes the VirtualService
    signal.signal(signal.SIGINT, end)
    code = 0
    try:
        ready = wait_ready(objects, args.namespace, name, args.timeout)
        print(f"route {route(ready, name, args.session)}", flush=True)
        hold(args.hold)
    except SessionEnded as signal_name:
        print(f"session {args.session}: {signal_name}", file=sys.stderr)
    except (TimeoutError, RuntimeError) as error:
        print(f"session {args.session}: {error}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish deleting the route
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            objects.delete_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL, name)
        except ApiException as error:
            if error.status != 404:
                print(f"cannot delete VirtualService {args.namespace}/{name}: HTTP {error.status}", file=sys.stderr)
                code = 1
        print(f"session {args.session} ended: VirtualService {args.namespace}/{name} deleted", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
