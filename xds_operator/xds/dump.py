"""A snapshot as JSON, for people: the Envoy resources a proxy receives (or would), per type.

Pure. Each resource is shown as the `Any` it travels in (protobuf's JSON mapping, with `@type`
and proto field names, as Envoy's own admin `/config_dump` shows it), so the two can be read
side by side and parsed back with `google.protobuf.json_format.ParseDict`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

from google.protobuf import any_pb2, json_format

from xds_operator.xds.snapshot import NAMED_TYPES, PUSH_ORDER, SHORT_NAMES, Snapshot


class TypeDump(TypedDict):
    """One type's part of a dump: its version and its resources (protobuf's JSON mapping of each `Any`)."""

    version: str
    resources: list[dict[str, Any]]


def resources_json(
    snapshot: Snapshot, subscriptions: Mapping[str, frozenset[str] | None] | None = None
) -> dict[str, TypeDump]:
    """Per type (CDS, EDS, LDS): its version and resources.

    `subscriptions`: per type URL, the names a proxy asked for (None: all). Without it, or for a
    type it has not subscribed yet, every resource of the snapshot is shown.
    """
    result: dict[str, TypeDump] = {}
    for type_url in PUSH_ORDER:
        names = (subscriptions or {}).get(type_url) if type_url in NAMED_TYPES else None
        selection = snapshot.select(type_url, names)
        result[SHORT_NAMES[type_url]] = {
            "version": selection.version,
            "resources": [_as_json(resource.type_url, resource.body) for resource in selection.resources],
        }
    return result


def _as_json(type_url: str, body: bytes) -> dict[str, Any]:
    packed = any_pb2.Any(type_url=type_url, value=body)
    # Through text: MessageToDict returns an OrderedDict for an Any, which YAML cannot represent.
    as_json: dict[str, Any] = json.loads(
        json_format.MessageToJson(packed, preserving_proto_field_name=True, indent=None)
    )
    return as_json
