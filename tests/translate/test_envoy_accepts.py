"""The real Envoy accepts what we produce: generated valid VirtualServices, translated, in `envoy --mode validate`.

Each example is a batch of VirtualServices held statically in one bootstrap (one Envoy run per batch,
to stay quick). EDS clusters keep their ADS config source (the bootstrap has an ads_config pointing
at a static xds cluster, which validate mode never connects to), and their ClusterLoadAssignment is
checked as the load assignment of a STATIC copy of the cluster, so Envoy parses every endpoint address.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.udp.udp_proxy.v3 import udp_proxy_pb2
from google.protobuf import json_format
from hypothesis import event, given
from hypothesis import strategies as st

from tests.support.vs_strategies import examples, listener_block, virtual_services
from xds_operator.api import parse_virtual_service
from xds_operator.translate import EnvoyResources, translate_virtual_service

ENVOY = Path(sys.executable).parent / "envoy"  # never `import envoy`: xds-protos owns that package too
POD_IPS = ("10.1.0.7", "fd00::7")


def resolve_pods(namespace: str, selector: Any) -> tuple[str, ...]:
    return POD_IPS


def batch_unique(documents: list[dict]) -> list[dict]:
    """Rename and renumber so the batch fits one Envoy: listener and cluster names and ports distinct across it."""
    used_ports: set[int] = set()
    result = []
    for index, document in enumerate(documents):
        document = copy.deepcopy(document)
        prefix = f"v{index}-"
        for listener in document["spec"]["listeners"]:
            block = listener_block(listener)
            cluster = block["cluster"]
            listener["name"] = _prefixed(prefix, listener["name"])
            cluster["name"] = _prefixed(prefix, cluster["name"])
            port = block["port"]
            while port in used_ports:
                port = port % 65535 + 1
            used_ports.add(port)
            block["port"] = port
        result.append(document)
    return result


def _prefixed(prefix: str, name: str) -> str:
    return (prefix + name)[:200].rstrip("._-")


def bootstrap(resources: Iterable[EnvoyResources]) -> dict:
    listeners, clusters = [], []
    for translated in resources:
        listeners.extend(translated.listeners)
        clusters.extend(translated.clusters)
        for assignment in translated.load_assignments:
            static = cluster_pb2.Cluster(name=f"eds-check-{assignment.cluster_name}", type=cluster_pb2.Cluster.STATIC)
            static.load_assignment.CopyFrom(assignment)
            static.load_assignment.cluster_name = static.name
            clusters.append(static)
    return {
        "node": {"id": "validate", "cluster": "validate"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            }
        },
        "static_resources": {
            "listeners": [json_format.MessageToDict(listener) for listener in listeners],
            "clusters": [json_format.MessageToDict(cluster) for cluster in clusters] + [XDS_CLUSTER],
        },
    }


XDS_CLUSTER = {
    "name": "xds",
    "type": "STATIC",
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    },
    "load_assignment": {
        "cluster_name": "xds",
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}
        ],
    },
}


def envoy_validate(config: dict, directory: Path) -> subprocess.CompletedProcess[str]:
    path = directory / "bootstrap.json"
    path.write_text(json.dumps(config))
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warn", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def translated(documents: list[dict]) -> list[EnvoyResources]:
    return [translate_virtual_service(parse_virtual_service(d), resolve_pods) for d in batch_unique(documents)]


@examples(4)
@given(st.lists(virtual_services(max_listeners=3), min_size=8, max_size=12))
def test_envoy_accepts_generated_virtual_services(tmp_path_factory, documents: list[dict]) -> None:
    resources = translated(documents)
    event(f"{len(resources)} VirtualServices, {sum(len(r.listeners) for r in resources)} listeners")
    event(f"{sum(len(r.load_assignments) for r in resources)} EDS clusters")
    result = envoy_validate(bootstrap(resources), tmp_path_factory.mktemp("envoy"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"Envoy rejected what we produce:\n{output[-3000:]}"
    assert "Deprecated field" not in output


def test_the_check_itself_fails_on_a_resource_envoy_rejects(tmp_path: Path) -> None:
    """A listener Envoy must reject (an empty hash key) fails the same check: the test above can fail."""
    document = {
        "apiVersion": "servicemesh.l7mp.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "calls"},
        "spec": {
            "selector": {"app": "x"},
            "listeners": [
                {
                    "name": "l",
                    "udp": {
                        "port": 2000,
                        "cluster": {
                            "name": "c",
                            "hash_key": "k",
                            "endpoints": [{"name": "w", "host": {"address": "10.0.0.1"}, "port": 1}],
                        },
                    },
                }
            ],
        },
    }
    [resources] = translated([document])
    assert envoy_validate(bootstrap([resources]), tmp_path).returncode == 0
    config = udp_proxy_pb2.UdpProxyConfig()
    resources.listeners[0].listener_filters[0].typed_config.Unpack(config)
    config.hash_policies[0].key = ""
    resources.listeners[0].listener_filters[0].typed_config.Pack(config)
    result = envoy_validate(bootstrap([resources]), tmp_path)
    assert result.returncode != 0
    assert "HashPolicyValidationError.Key" in result.stdout + result.stderr
