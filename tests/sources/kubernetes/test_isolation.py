"""Isolation in Kubernetes mode: a proxy gets exactly what its own pod's labels select, in its own namespace.

Against the fake API server with the real client and the real ADS server, for both ADS variants.
(tests/sources/kubernetes/test_operator.py already covers: a proxy waits until its pod is known, claimed labels are
ignored for a proxy whose pod selects nothing, a relabelled pod gains a VirtualService.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.ads_client import AdsClient, DeltaAdsClient, delta_names, resource_names
from tests.support.operator import INGRESS, NS, Operator, pod_body, vs_body
from tests.support.vs_strategies import examples
from xds_operator.api import parse_virtual_service
from xds_operator.sources.kubernetes.pods import PodIndex
from xds_operator.xds.cache import SnapshotCache
from xds_operator.xds.snapshot import CLUSTER, ENDPOINT, LISTENER

OTHER_NS = "other"
EGRESS = {"app": "envoy-egress"}

Client = AdsClient | DeltaAdsClient


@pytest.fixture(params=["sotw", "delta"])
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


def connect(operator: Operator, variant: str, node_id: str, claimed: Mapping[str, str] | None = None) -> Client:
    if variant == "sotw":
        return operator.connect(node_id, claimed)
    ads = DeltaAdsClient(operator.channel, node_id, claimed or {})
    operator.clients.append(ads)  # closed by the fixture
    return ads


async def clusters_and_listeners(ads: Client) -> tuple[list[str], list[str]]:
    """Subscribe to CDS and LDS (wildcard) and ACK: the names the proxy is given."""
    cds = await ads.subscribe_and_ack(CLUSTER)
    lds = await ads.subscribe_and_ack(LISTENER)
    if isinstance(ads, DeltaAdsClient):
        return delta_names(cds), delta_names(lds)
    return resource_names(cds), resource_names(lds)


def create_pod(operator: Operator, name: str, labels: Mapping[str, str], namespace: str = NS) -> dict[str, Any]:
    body = pod_body(name, labels)
    body["metadata"]["namespace"] = namespace
    return operator.core.create_namespaced_pod(namespace, body).to_dict()


async def test_a_proxy_gets_only_what_its_pods_labels_select(operator: Operator, variant: str):
    operator.create(vs_body("ingress", 2000))
    operator.create(vs_body("egress", 2001, selector=EGRESS))
    operator.create(vs_body("edge", 2002, selector={"tier": "edge"}))
    create_pod(operator, "envoy-0", {**INGRESS, "tier": "edge"})
    await operator.settle()
    ads = connect(operator, variant, f"{NS}/envoy-0")
    assert await clusters_and_listeners(ads) == (["edge-c", "ingress-c"], ["edge-l", "ingress-l"])


async def test_labels_a_proxy_claims_add_nothing_to_its_pods(operator: Operator, variant: str):
    operator.create(vs_body("ingress", 2000))
    operator.create(vs_body("egress", 2001, selector=EGRESS))
    operator.create(vs_body("edge", 2002, selector={"tier": "edge"}))
    create_pod(operator, "envoy-0", INGRESS)
    await operator.settle()
    ads = connect(operator, variant, f"{NS}/envoy-0", claimed={**EGRESS, "tier": "edge"})
    assert await clusters_and_listeners(ads) == (["ingress-c"], ["ingress-l"])


@pytest.mark.parametrize(
    "node_id",
    [f"{NS}/ghost", "0b7c1d2e-0000-4000-8000-000000000000", f"{OTHER_NS}/envoy-0", "envoy-0", ""],
    ids=["no-such-pod", "no-such-uid", "right-name-wrong-namespace", "bare-name", "empty"],
)
async def test_an_unknown_node_id_gets_no_response_at_all(operator: Operator, variant: str, node_id: str):
    operator.create(vs_body("ingress", 2000, eds=True))
    create_pod(operator, "envoy-0", INGRESS)  # the pod the ids above almost name
    await operator.settle()
    stranger = connect(operator, variant, node_id, claimed=INGRESS)
    proxy = connect(operator, variant, f"{NS}/envoy-0")  # the positive control: same requests, its own pod
    for ads in (stranger, proxy):
        await ads.send(CLUSTER)
        await ads.send(LISTENER)
        if isinstance(ads, DeltaAdsClient):
            await ads.send(ENDPOINT, subscribe=["ingress-c"])
        else:
            await ads.send(ENDPOINT, names=["ingress-c"])
    # The server answers: the proxy whose pod selects the VirtualService gets all three types (ACKing each).
    answered = {}
    while len(answered) < 3:
        response = await proxy.recv()
        names = delta_names(response) if isinstance(proxy, DeltaAdsClient) else resource_names(response)
        answered[response.type_url] = names
        if isinstance(proxy, DeltaAdsClient):
            await proxy.ack(response)
        else:
            await proxy.ack(response, names=["ingress-c"] if response.type_url == ENDPOINT else ())
    assert answered == {CLUSTER: ["ingress-c"], LISTENER: ["ingress-l"], ENDPOINT: ["ingress-c"]}
    # ... and sends the stranger nothing, then or after a change that reaches the proxy.
    await stranger.expect_nothing(0.5)
    operator.create(vs_body("more", 2001))
    if isinstance(proxy, DeltaAdsClient):
        await proxy.expect(CLUSTER, changed=["more-c"])
    else:
        await proxy.expect(CLUSTER, names=["ingress-c", "more-c"])
    await stranger.expect_nothing(0.5)


async def test_a_relabelled_pod_loses_the_virtualservice(operator: Operator, variant: str):
    operator.create(vs_body("ingress", 2000))
    create_pod(operator, "envoy-0", INGRESS)
    await operator.settle()
    ads = connect(operator, variant, f"{NS}/envoy-0")
    assert await clusters_and_listeners(ads) == (["ingress-c"], ["ingress-l"])
    operator.core.patch_namespaced_pod("envoy-0", NS, {"metadata": {"labels": {"app": "something-else"}}})
    # On a change, clusters go first, then listeners; both now empty.
    if isinstance(ads, DeltaAdsClient):
        await ads.expect(CLUSTER, changed=[], removed=["ingress-c"])
        await ads.expect(LISTENER, changed=[], removed=["ingress-l"])
    else:
        await ads.expect(CLUSTER, names=[])
        await ads.expect(LISTENER, names=[])


async def test_a_pod_in_another_namespace_with_matching_labels_gets_nothing_of_this_namespace(
    operator: Operator, variant: str
):
    """A VirtualService configures proxies in its own namespace only, as its selector endpoints are.

    Otherwise anyone allowed to create VirtualServices in one namespace could program (open ports
    on, and route the traffic of) Envoys in every other namespace whose labels they can guess.
    """
    operator.create(vs_body("ingress", 2000))
    create_pod(operator, "envoy-0", INGRESS, namespace=OTHER_NS)
    create_pod(operator, "envoy-0", INGRESS)  # same name and labels, in the VirtualService's namespace
    await operator.settle()
    outsider = connect(operator, variant, f"{OTHER_NS}/envoy-0")
    insider = connect(operator, variant, f"{NS}/envoy-0")
    assert await clusters_and_listeners(outsider) == ([], [])
    assert await clusters_and_listeners(insider) == (["ingress-c"], ["ingress-l"])

    # A VirtualService in the other namespace programs the proxy there, and only that one.
    body = vs_body("other-ingress", 3000)
    body["metadata"]["namespace"] = OTHER_NS
    operator.objects.create_namespaced_custom_object("servicemesh.l7mp.io", "v1", OTHER_NS, "virtualservices", body)
    if isinstance(outsider, DeltaAdsClient):
        await outsider.expect(CLUSTER, changed=["other-ingress-c"])
    else:
        await outsider.expect(CLUSTER, names=["other-ingress-c"])
    await insider.expect_nothing()


async def test_a_pod_uid_as_node_id_is_scoped_to_the_pods_namespace(operator: Operator, variant: str):
    operator.create(vs_body("ingress", 2000))
    pod = create_pod(operator, "envoy-0", INGRESS, namespace=OTHER_NS)
    await operator.settle()
    ads = connect(operator, variant, pod["metadata"]["uid"])
    assert await clusters_and_listeners(ads) == ([], [])


async def test_subscribing_to_another_proxys_eds_names_yields_nothing_of_them(operator: Operator, variant: str):
    """EDS is requested by name: a proxy naming a cluster it was not given must not get its endpoints."""
    operator.create(vs_body("ingress", 2000, eds=True))
    operator.create(vs_body("egress", 2001, eds=True, selector=EGRESS))
    create_pod(operator, "envoy-0", INGRESS)
    await operator.settle()
    ads = connect(operator, variant, f"{NS}/envoy-0")
    if isinstance(ads, DeltaAdsClient):
        await ads.send(ENDPOINT, subscribe=["ingress-c", "egress-c"])
    else:
        await ads.send(ENDPOINT, names=["ingress-c", "egress-c"])
    response = await ads.recv()
    names = delta_names(response) if isinstance(ads, DeltaAdsClient) else resource_names(response)
    assert names == ["ingress-c"]
    while True:  # whatever else arrives carries none of egress-c's endpoints
        try:
            response = await ads.recv(timeout=0.5)
        except AssertionError:
            break
        names = delta_names(response) if isinstance(ads, DeltaAdsClient) else resource_names(response)
        assert "egress-c" not in names


LABEL_VALUES = st.dictionaries(st.sampled_from(["app", "tier", "zone"]), st.sampled_from(["a", "b"]), max_size=3)
NAMESPACES = st.sampled_from([NS, OTHER_NS])


@examples(100)
@given(
    pods=st.lists(st.tuples(NAMESPACES, LABEL_VALUES), max_size=6),
    services=st.lists(st.tuples(NAMESPACES, LABEL_VALUES.filter(bool)), max_size=6),
)
def test_every_proxy_gets_exactly_the_virtualservices_of_its_namespace_its_pods_labels_select(
    pods: list[tuple[str, dict[str, str]]], services: list[tuple[str, dict[str, str]]]
) -> None:
    """The model under the tests above: identity from the pod index, selection in the cache."""
    index = PodIndex()
    for number, (namespace, labels) in enumerate(pods):
        body = pod_body(f"envoy-{number}", labels)
        body["metadata"].update(namespace=namespace, uid=f"uid-{number}")
        index.upsert(body)
    cache = SnapshotCache()
    for number, (namespace, selector) in enumerate(services):
        body = vs_body(f"vs-{number}", 2000 + number, selector=selector)
        body["metadata"]["namespace"] = namespace
        cache.upsert(parse_virtual_service(body))
    cache.commit()
    for number, (namespace, labels) in enumerate(pods):
        expected = {
            f"vs-{n}-l"
            for n, (vs_namespace, selector) in enumerate(services)
            if vs_namespace == namespace and selector.items() <= labels.items()
        }
        for node_id in (f"{namespace}/envoy-{number}", f"uid-{number}"):
            assert set(cache.snapshot_for(index.labels_for(node_id)).resources[LISTENER]) == expected
