"""`xds-operator status`: every connected proxy, its group, per type what it was sent and how it answered, and
the endpoints whose health check fails on it (its health reports).

Reads /debug/proxies from a running control plane's admin port; formatting is pure.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TypeGuard, get_args

from xds_operator.admin.views import HealthView, ProxyView, StreamState, TypeStatus, UnhealthyEndpoint
from xds_operator.xds.snapshot import PUSH_ORDER, SHORT_NAMES

TYPES = tuple(SHORT_NAMES[type_url] for type_url in PUSH_ORDER)  # CDS, EDS, LDS
TIMEOUT_SECONDS = 5.0
STATES = {"ACKed": "ACKED", "NACKed": "NACKED", "pending": "PENDING", "waiting": "NOT SENT"}
STREAM_STATES: tuple[StreamState, ...] = get_args(StreamState)


class Unreachable(Exception):
    """The admin port did not answer, or answered something else than the proxy list."""


def fetch(admin_address: str) -> list[ProxyView]:
    url = f"http://{admin_address}/debug/proxies"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise Unreachable(f"{url}: HTTP {error.code} {error.reason}") from error
    except http.client.HTTPException as error:  # an answer, but not HTTP/1.1: the xDS port (HTTP/2), say
        raise Unreachable(
            f"{admin_address} answered, but not as an HTTP server ({type(error).__name__}): that is not the admin "
            "port; is it the xDS port? (the admin port is serve's --admin-address/--admin-port, default 19000)"
        ) from error
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(
            f"cannot reach the admin port at {admin_address} ({reason}): is `xds-operator serve` running "
            "with that admin address and port? (set it with --admin-address HOST:PORT)"
        ) from error
    try:
        proxies = json.loads(body)
    except ValueError as error:
        raise Unreachable(f"{url} did not answer JSON; is that an xds-operator admin port?") from error
    try:
        return proxy_views(proxies)
    except ValueError as error:
        raise Unreachable(
            f"{url} did not answer a list of proxies ({error}); is that an xds-operator admin port?"
        ) from None


def proxy_views(answer: object) -> list[ProxyView]:
    """The /debug/proxies answer, checked to have the shape the server writes (it comes over the network);
    ValueError naming the first thing that does not."""
    if not isinstance(answer, list):
        raise ValueError("not a list")
    return [_proxy_view(item, f"item {index}") for index, item in enumerate(answer)]


def _proxy_view(item: object, where: str) -> ProxyView:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    node_id, variant, group = (_text(item, field, where) for field in ("node_id", "variant", "group"))
    labels, types = item.get("labels"), item.get("types")
    if labels is not None and not (
        isinstance(labels, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise ValueError(f"{where}.labels is not a map of strings")
    if not isinstance(types, dict):
        raise ValueError(f"{where}.types is not an object")
    return {
        "node_id": node_id,
        "variant": variant,
        "labels": labels,
        "group": group,
        "types": {str(kind): _type_status(state, f"{where}.types.{kind}") for kind, state in types.items()},
        "health": None if item.get("health") is None else _health(item.get("health"), f"{where}.health"),
    }


def _health(item: object, where: str) -> HealthView:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    counts = [item.get(field) for field in ("clusters", "endpoints", "healthy", "unhealthy_count", "reports")]
    if not all(isinstance(count, int) for count in counts):
        raise ValueError(f"{where} lacks its counts")
    unhealthy = item.get("unhealthy")
    if not isinstance(unhealthy, list):
        raise ValueError(f"{where}.unhealthy is not a list")
    clusters, endpoints, healthy, unhealthy_count, reports = (int(count) for count in counts)  # type: ignore[arg-type]
    return {
        "clusters": clusters,
        "endpoints": endpoints,
        "healthy": healthy,
        "unhealthy_count": unhealthy_count,
        "unhealthy": [_unhealthy(entry, f"{where}.unhealthy[{i}]") for i, entry in enumerate(unhealthy)],
        "reports": reports,
    }


def _unhealthy(item: object, where: str) -> UnhealthyEndpoint:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    port = item.get("health_check_port")
    if port is not None and not isinstance(port, int):
        raise ValueError(f"{where}.health_check_port is not a number")
    return {
        "cluster": _text(item, "cluster", where),
        "endpoint": _text(item, "endpoint", where),
        "health_check_port": port,
    }


def _type_status(item: object, where: str) -> TypeStatus:
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    state = item.get("state")
    if not _is_state(state):
        raise ValueError(f"{where}.state is not one of {', '.join(STREAM_STATES)}")
    version, acked, error = (_optional_text(item, field, where) for field in ("version", "acked_version", "error"))
    return {"version": version, "state": state, "acked_version": acked, "error": error}


def _is_state(value: object) -> TypeGuard[StreamState]:
    return value in STREAM_STATES


def _text(item: dict[object, object], field: str, where: str) -> str:
    value = item.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{where}.{field} is not a string")
    return value


def _optional_text(item: dict[object, object], field: str, where: str) -> str | None:
    return None if item.get(field) is None else _text(item, field, where)


def cell(state: TypeStatus | None) -> str:
    """One type of one proxy: `<version> <STATE>`, e.g. `3f2a9c01d4e5b6a7 ACKED`."""
    if not state:
        return "NOT SUBSCRIBED"
    return f"{state['version'] or '-'} {STATES[state['state']]}"


def table(proxies: Sequence[ProxyView]) -> str:
    """One line per proxy (sorted by node id), columns aligned; NACK errors below their proxy."""
    header = ["NODE", "GROUP", "VARIANT", *TYPES, "HEALTHY"]
    rows: list[list[str]] = []
    errors: list[str] = []
    failing: list[str] = []
    for proxy in sorted(proxies, key=lambda p: (p["node_id"], p["group"])):
        types = proxy["types"]
        health = proxy.get("health")
        rows.append(
            [
                proxy["node_id"],
                proxy["group"],
                proxy["variant"],
                *(cell(types.get(kind)) for kind in TYPES),
                f"{health['healthy']}/{health['endpoints']}" if health else "-",
            ]
        )
        if health:
            failing += [f"  {proxy['node_id']} {_failing(entry)}" for entry in health["unhealthy"]]
            if health["unhealthy_count"] > len(health["unhealthy"]):
                failing.append(f"  {proxy['node_id']}: and {health['unhealthy_count'] - len(health['unhealthy'])} more")
        for kind in TYPES:
            state = types.get(kind)
            if state is not None and state["state"] == "NACKed":
                kept = state["acked_version"] or "nothing"
                errors.append(f"  {proxy['node_id']} {kind}: NACKED (runs {kept}): {state['error']}")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if not rows:
        lines.append("(no proxies connected)")
    if errors:
        lines += ["", "Rejected by the proxy (it keeps running its last accepted version):", *errors]
    if failing:
        lines += ["", "Failing health checks, as each proxy sees them (it sends those endpoints nothing):", *failing]
    return "\n".join(lines) + "\n"


def _failing(entry: UnhealthyEndpoint) -> str:
    port = entry["health_check_port"]
    checked = f" (health check port {port})" if port is not None else ""
    return f"{entry['cluster']}: {entry['endpoint']}{checked} fails"
