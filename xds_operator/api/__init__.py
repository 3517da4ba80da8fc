"""The VirtualService API: typed model, parsing and validation (driven by protos/)."""

from . import virtualservice_pb2 as pb
from .model import Key, Protocol, VirtualService, cluster_of, key_of, port_of, protocol_of
from .schema import API_GROUP, API_VERSION, KIND
from .validate import FieldError, ValidationError, parse_spec, parse_virtual_service

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
    "key_of",
    "parse_spec",
    "parse_virtual_service",
    "pb",
    "port_of",
    "protocol_of",
]
