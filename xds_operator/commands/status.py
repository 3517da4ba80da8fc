"""`xds-operator status`: every connected proxy, its group, and per type what it was sent and how it answered.

Reads /debug/proxies from a running control plane's admin port; formatting is pure.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from xds_operator.xds.snapshot import PUSH_ORDER, SHORT_NAMES

TYPES = tuple(SHORT_NAMES[type_url] for type_url in PUSH_ORDER)  # CDS, EDS, LDS
TIMEOUT_SECONDS = 5.0
STATES = {"ACKed": "ACKED", "NACKed": "NACKED", "pending": "PENDING", "waiting": "NOT SENT"}


class Unreachable(Exception):
    """The admin port did not answer, or answered something else than the proxy list."""


def fetch(admin_address: str) -> list[dict]:
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
    if not isinstance(proxies, list):
        raise Unreachable(f"{url} did not answer a list of proxies; is that an xds-operator admin port?")
    return proxies


def cell(state: Mapping[str, object] | None) -> str:
    """One type of one proxy: `<version> <STATE>`, e.g. `3f2a9c01d4e5b6a7 ACKED`."""
    if not state:
        return "NOT SUBSCRIBED"
    version = state.get("version") or "-"
    return f"{version} {STATES.get(str(state.get('state')), str(state.get('state')).upper())}"


def table(proxies: Sequence[Mapping]) -> str:
    """One line per proxy (sorted by node id), columns aligned; NACK errors below their proxy."""
    header = ["NODE", "GROUP", "VARIANT", *TYPES]
    rows: list[list[str]] = []
    errors: list[str] = []
    for proxy in sorted(proxies, key=lambda p: (str(p.get("node_id")), str(p.get("group")))):
        types = proxy.get("types") or {}
        rows.append(
            [
                str(proxy.get("node_id")),
                str(proxy.get("group") or ""),
                str(proxy.get("variant") or ""),
                *(cell(types.get(kind)) for kind in TYPES),
            ]
        )
        for kind in TYPES:
            state = types.get(kind) or {}
            if state.get("state") == "NACKed":
                kept = state.get("acked_version") or "nothing"
                errors.append(f"  {proxy.get('node_id')} {kind}: NACKED (runs {kept}): {state.get('error')}")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    if not rows:
        lines.append("(no proxies connected)")
    if errors:
        lines += ["", "Rejected by the proxy (it keeps running its last accepted version):", *errors]
    return "\n".join(lines) + "\n"
