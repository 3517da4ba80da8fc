"""The admin port's views of a running control plane: /metrics, /debug/config_dump, /debug/runtime."""

from __future__ import annotations

import asyncio
import os

from xds_operator.admin.metrics import CONTENT_TYPE, Metrics
from xds_operator.admin.server import Handler, Payload, WithQuery
from xds_operator.xds.dump import resources_json
from xds_operator.xds.server import AggregatedDiscoveryService, group_name

MAX_LISTED = 20  # node ids named in a 404


def routes(service: AggregatedDiscoveryService, metrics: Metrics) -> dict[str, Handler | WithQuery]:
    return {
        "/metrics": lambda: (200, Payload(CONTENT_TYPE, metrics.exposition())),
        "/debug/config_dump": WithQuery(lambda query: config_dump(service, query.get("node"))),
        "/debug/runtime": lambda: (200, runtime(service)),
    }


def config_dump(service: AggregatedDiscoveryService, node_id: str | None) -> tuple[int, object]:
    """The resources a connected proxy receives now: its snapshot, with the EDS names it subscribed."""
    connections = service.connections()
    if not node_id:
        return 400, "name the proxy: /debug/config_dump?node=NODE_ID (see /debug/proxies)\n"
    matching = [c for c in connections if c.stream.node_id == node_id]
    if not matching:
        known = sorted({c.stream.node_id for c in connections})
        listed = ", ".join(known[:MAX_LISTED]) + (
            f" and {len(known) - MAX_LISTED} more" if len(known) > MAX_LISTED else ""
        )
        return 404, f"no connected proxy has node id {node_id!r}; connected: {listed or 'none'}\n"
    connection = matching[-1]  # the newest stream, if a reconnecting proxy has two
    if connection.watch.snapshot is None:
        return 409, f"proxy {node_id!r} is connected but its identity (pod) is not known yet: it receives nothing\n"
    subscriptions = {type_url: state.names for type_url, state in connection.stream.types.items() if state.subscribed}
    return 200, {
        "node_id": node_id,
        "variant": connection.stream.variant,
        "group": group_name(connection.watch.labels),
        "labels": connection.watch.labels,
        "resources": resources_json(connection.watch.snapshot, subscriptions),
    }


def runtime(service: AggregatedDiscoveryService) -> dict[str, int]:
    """What must not grow with churn: asyncio tasks, streams, cache groups and watches, resident memory."""
    try:
        with open("/proc/self/statm") as statm:  # Linux; the field is in pages
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        rss = 0  # not Linux: unknown
    return {"tasks": len(asyncio.all_tasks()), **service.counts(), "rss_bytes": rss}
