"""The VirtualService API: typed model, parsing and validation (driven by protos/)."""

from xds_operator.api import virtualservice_pb2 as pb
from xds_operator.api.model import (
    Key,
    Protocol,
    VirtualService,
    cluster_of,
    has_port,
    key_of,
    port_of,
    protocol_of,
)
from xds_operator.api.schema import API_GROUP, API_VERSION, KIND
from xds_operator.api.validate import FieldError, ValidationError, parse_spec, parse_virtual_service

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "FieldError",
    "Key",
    "Protocol",
    "ValidationError",
    "VirtualService",
    "cluster_of",
    "has_port",
    "key_of",
    "parse_spec",
    "parse_virtual_service",
    "pb",
    "port_of",
    "protocol_of",
]
