"""`xds-operator status` reads /debug/proxies into typed rows: what the server writes passes, others are refused."""

import json

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from xds_operator.commands.status import proxy_views, table
from xds_operator.xds.snapshot import CLUSTER, LISTENER, Snapshot
from xds_operator.xds.stream import SotwStream


def served_row() -> dict[str, object]:
    """A row as the server writes it: a stream that got CDS and LDS and NACKed LDS, through JSON."""
    stream = SotwStream("edge-1")
    snapshot = Snapshot.build({CLUSTER: [], LISTENER: []})
    for type_url in (CLUSTER, LISTENER):
        stream.on_request(discovery_pb2.DiscoveryRequest(type_url=type_url), snapshot)
    nack = discovery_pb2.DiscoveryRequest(type_url=LISTENER, response_nonce=stream.types[LISTENER].nonce)
    nack.error_detail.message = "cannot bind"
    stream.on_request(nack, snapshot)
    row = {"node_id": stream.shown, "variant": stream.variant, "labels": {"app": "edge"}, "group": "app=edge"}
    return json.loads(json.dumps({**row, "types": stream.type_report()}))


def test_what_the_server_writes_is_read_and_shown() -> None:
    (view,) = proxy_views([served_row()])
    assert view["types"]["LDS"]["state"] == "NACKed"
    text = table([view])
    assert "edge-1  app=edge  sotw" in text
    assert "edge-1 LDS: NACKED (runs nothing): cannot bind" in text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda row: row.pop("node_id"), "item 0.node_id"),
        (lambda row: row.update(labels={"app": 1}), "item 0.labels"),
        (lambda row: row.update(types=[]), "item 0.types"),
        (lambda row: row["types"]["CDS"].update(state="done"), "item 0.types.CDS.state"),
        (lambda row: row["types"]["LDS"].update(error=7), "item 0.types.LDS.error"),
    ],
)
def test_an_answer_of_another_shape_is_refused_naming_the_field(change, named) -> None:
    row = served_row()
    change(row)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        proxy_views([row])


def test_not_a_list_is_refused() -> None:
    with pytest.raises(ValueError, match="not a list"):
        proxy_views({"node_id": "x"})
