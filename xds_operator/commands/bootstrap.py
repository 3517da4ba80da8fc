"""Generate an Envoy bootstrap that points ADS at the control plane."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from xds_operator.net import is_ip, split_host_port
from xds_operator.xds.transport import MIN_CLIENT_PING_INTERVAL_SECONDS

XDS_CLUSTER = "xds_cluster"
DEFAULT_KEEPALIVE_SECONDS = 30.0  # Envoy pings the control plane this often: a dead one is noticed, not waited on
KEEPALIVE_TIMEOUT_SECONDS = 10.0  # at most; never longer than the interval
# The server answers pings more frequent than MIN_CLIENT_PING_INTERVAL_SECONDS with GOAWAY (too_many_pings);
# twice that leaves room for network jitter (Envoy's own jitter only lengthens the interval).
MIN_KEEPALIVE_SECONDS = 2 * MIN_CLIENT_PING_INTERVAL_SECONDS


@dataclass(frozen=True)
class ClientTls:
    """How Envoy secures its xDS connection: the CA it trusts for the server, and for mTLS its own certificate.

    Paths are as Envoy sees them (they are written into the bootstrap, not read here).
    server_name: the name the server's certificate must carry as a SAN (a DNS name, or an IP address),
    also sent as SNI when it is a DNS name; default: the host of the xDS address.
    """

    ca: str
    certificate: str | None = None
    key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both for a client certificate, or neither")


def envoy_bootstrap(
    node_id: str,
    labels: Mapping[str, str],
    xds_address: str,
    *,
    cluster: str = "xds-operator",
    admin_address: str = "127.0.0.1:9901",
    delta: bool = True,
    tls: ClientTls | None = None,
    keepalive: float = DEFAULT_KEEPALIVE_SECONDS,
    health_reports: bool = True,
) -> dict[str, Any]:
    """The bootstrap as a dict: ADS over gRPC (HTTP/2) for CDS and LDS, EDS through ADS.

    delta: incremental xDS (DELTA_GRPC); False: state of the world (GRPC).
    tls: connect over TLS, verifying the server's certificate (and present a client certificate).
    keepalive: seconds between Envoy's HTTP/2 PINGs on the xDS connection; 0 sends none.
    health_reports: set hds_config, so the proxy reports endpoint health (xds/hds.py).
    """
    xds_host, xds_port = split_host_port(xds_address, flag="--xds-address")
    admin_host, admin_port = split_host_port(admin_address, allow_port_zero=True, flag="--admin-address")
    discovery = "STATIC" if is_ip(xds_host) else "STRICT_DNS"
    if keepalive != 0 and not keepalive >= MIN_KEEPALIVE_SECONDS:
        raise ValueError(
            f"--keepalive {keepalive:g}: expected 0 (off) or at least {MIN_KEEPALIVE_SECONDS:g} seconds "
            "(the control plane refuses more frequent pings)"
        )
    http2: dict[str, Any] = {}
    if keepalive:
        http2["connection_keepalive"] = {
            "interval": _duration(keepalive),
            "timeout": _duration(min(keepalive, KEEPALIVE_TIMEOUT_SECONDS)),
        }
    xds_cluster: dict[str, Any] = {
        "name": XDS_CLUSTER,
        "type": discovery,
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        },
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": xds_host, "port_value": xds_port}}}}
                    ]
                }
            ],
        },
    }
    if tls is not None:
        xds_cluster["transport_socket"] = transport_socket(tls, tls.server_name or xds_host)
    bootstrap: dict[str, Any] = {
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
        "static_resources": {"clusters": [xds_cluster]},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
    }
    if health_reports:
        # Health Discovery Service on the same connection: the proxy runs the health checks of the clusters
        # it is sent a second time, for the control plane, and reports every endpoint's health to it.
        bootstrap["hds_config"] = {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
        }
    return bootstrap


def transport_socket(tls: ClientTls, server_name: str) -> dict[str, Any]:
    """Envoy's TLS transport socket for the xDS cluster.

    Envoy verifies nothing unless trusted_ca is set; with it, the chain is verified, and the SAN
    matcher pins the server's identity (any certificate from the CA would pass without it).
    """
    ip = is_ip(server_name)
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],  # gRPC runs over HTTP/2
        "validation_context": {
            "trusted_ca": {"filename": tls.ca},
            "match_typed_subject_alt_names": [
                {"san_type": "IP_ADDRESS" if ip else "DNS", "matcher": {"exact": server_name}}
            ],
        },
    }
    if tls.certificate is not None and tls.key is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": tls.certificate}, "private_key": {"filename": tls.key}}
        ]
    context: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    }
    if not ip:
        context["sni"] = server_name  # SNI carries host names only (RFC 6066), never an address
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


class _Dumper(yaml.SafeDumper):
    """Quotes the strings Envoy's YAML parser (yaml-cpp) would read as booleans but PyYAML leaves plain: y, n."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(bootstrap: dict[str, Any]) -> str:
    """YAML whose strings stay strings for Envoy: a node id or label value `n` is not the boolean false."""
    return yaml.dump(bootstrap, Dumper=_Dumper, sort_keys=False)
