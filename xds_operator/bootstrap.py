"""Generate an Envoy bootstrap that points ADS at the control plane."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import yaml

XDS_CLUSTER = "xds_cluster"


def split_host_port(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 as [::1]:PORT). Raises ValueError with a readable message."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    lowest = 0 if allow_port_zero else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"{address!r}: expected HOST:PORT with a port in {lowest}..65535")
    return host, int(port)


def envoy_bootstrap(
    node_id: str,
    labels: Mapping[str, str],
    xds_address: str,
    *,
    cluster: str = "xds-operator",
    admin_address: str = "127.0.0.1:9901",
    delta: bool = False,
) -> dict:
    """The bootstrap as a dict: ADS over gRPC (HTTP/2) for CDS and LDS, EDS through ADS.

    delta: incremental xDS (DELTA_GRPC) instead of state of the world (GRPC).
    """
    xds_host, xds_port = split_host_port(xds_address)
    admin_host, admin_port = split_host_port(admin_address, allow_port_zero=True)
    try:
        ipaddress.ip_address(xds_host)
        discovery = "STATIC"
    except ValueError:
        discovery = "STRICT_DNS"
    return {
        "node": {"id": node_id, "cluster": cluster, "metadata": {"labels": dict(labels)}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": discovery,
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {"socket_address": {"address": xds_host, "port_value": xds_port}}
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
    }


class _Dumper(yaml.SafeDumper):
    """Quotes the strings Envoy's YAML parser (yaml-cpp) would read as booleans but PyYAML leaves plain: y, n."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(bootstrap: dict) -> str:
    """YAML whose strings stay strings for Envoy: a node id or label value `n` is not the boolean false."""
    return yaml.dump(bootstrap, Dumper=_Dumper, sort_keys=False)
