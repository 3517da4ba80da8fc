"""Read the rules carried as custom options in the API's proto descriptors.

Both the validator and the CRD generator walk the descriptors through these helpers, so
neither keeps a copy of the schema.
"""

from __future__ import annotations

from functools import cache

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from . import virtualservice_pb2 as pb

API_GROUP = "servicemesh.l7mp.io"
API_VERSION = "v1"
KIND = "VirtualService"
SPEC = pb.VirtualServiceSpec.DESCRIPTOR

INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)
# Bounds of the proto types themselves, so a value never overflows the message.
TYPE_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


@cache
def field_rules(field: FieldDescriptor) -> pb.FieldRules:
    return field.GetOptions().Extensions[pb.field]


@cache
def message_rules(message: Descriptor) -> pb.MessageRules:
    return message.GetOptions().Extensions[pb.message]


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated and not is_map(field)


def integer_bounds(field: FieldDescriptor) -> tuple[int, int]:
    """The allowed range of an integer field: its rules, clipped to its proto type."""
    low, high = TYPE_BOUNDS[field.type]
    rules = field_rules(field)
    if rules.HasField("minimum"):
        low = max(low, rules.minimum)
    if rules.HasField("maximum"):
        high = min(high, rules.maximum)
    return low, high
