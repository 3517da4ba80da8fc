"""Read the rules carried as custom options in the API's proto descriptors.

Both the validator and the CRD generator walk the descriptors through these helpers, so
neither keeps a copy of the schema.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from xds_operator.api import virtualservice_pb2 as pb

if TYPE_CHECKING:
    from google.protobuf.descriptor_pb2 import FieldOptions, MessageOptions
    from google.protobuf.internal.extension_dict import _ExtensionFieldDescriptor


def descriptor_of(message: Message | type[Message]) -> Descriptor:
    """A message's descriptor. typeshed types `DESCRIPTOR` as either the Python class or upb's own one; upb's
    is an instance of the Python class at run time (its metaclass says so), which narrows the type here."""
    descriptor = message.DESCRIPTOR
    if not isinstance(descriptor, Descriptor):
        raise TypeError(f"{descriptor!r} is not a protobuf Descriptor")
    return descriptor


def message_of(field: FieldDescriptor) -> Descriptor:
    """The message type of a message (or map) field."""
    if field.message_type is None:
        raise ValueError(f"{field.full_name} is not a message field")
    return field.message_type


API_GROUP = "servicemesh.l7mp.io"
API_VERSION = "v1"
KIND = "VirtualService"
PLURAL = "virtualservices"  # the resource name in API paths (and the CRD's name: PLURAL.API_GROUP)
SPEC = descriptor_of(pb.VirtualServiceSpec)
# status.listeners[].addresses lists at most this many proxy IPs: the status of a VirtualService
# served by thousands of proxies must stay far below the API server's object size limit.
MAX_STATUS_ADDRESSES = 32

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


# protoc's stub declares the API's two options as plain FieldDescriptors; typeshed's `Extensions[...]` takes
# them typed by the options they extend and the rules message they hold (which is what they are).
_FIELD_RULES = cast("_ExtensionFieldDescriptor[FieldOptions, pb.FieldRules]", pb.field)
_MESSAGE_RULES = cast("_ExtensionFieldDescriptor[MessageOptions, pb.MessageRules]", pb.message)


@cache
def field_rules(field: FieldDescriptor) -> pb.FieldRules:
    return field.GetOptions().Extensions[_FIELD_RULES]


@cache
def message_rules(message: Descriptor) -> pb.MessageRules:
    return message.GetOptions().Extensions[_MESSAGE_RULES]


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


def unique_path(message: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """The fields along one dotted FieldRules.unique_by path, from `message` down to a scalar.

    Every field on the way must be singular and either required or one of its message's
    exactly_one_of choices (the last may also be an optional scalar), so each item has at most one
    value to compare (a schema check, not a data check: raises ValueError for a bad proto option).
    Items without a value are skipped.
    """
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message  # None past a scalar field
    for name in dotted.split("."):
        field = current.fields_by_name.get(name) if current is not None else None
        if current is None or field is None:
            raise ValueError(f"unique_by {dotted!r}: {name!r} is not a field here")
        chosen = name in message_rules(current).exactly_one_of
        # The last field may also be optional (udp.port: absent when the control plane assigns it).
        optional = field.has_presence and field.message_type is None
        if field.is_repeated or not (field_rules(field).required or chosen or optional):
            raise ValueError(
                f"unique_by {dotted!r}: {field.full_name} must be singular, and required, a choice "
                "or an optional scalar"
            )
        fields.append(field)
        current = field.message_type
    if fields[-1].message_type is not None:
        raise ValueError(f"unique_by {dotted!r}: must end at a scalar field")
    return fields


def unique_alternatives(message: Descriptor, key: str) -> list[str]:
    """The dotted paths of a unique_by key: one, or several joined by "|" whose values share one space.

    "udp.cluster.name|tcp.cluster.name": an item's value is at whichever path it has, and a UDP
    and a TCP listener may not share a cluster name. Each path is checked with unique_path.
    """
    paths = key.split("|")
    for dotted in paths:
        unique_path(message, dotted)
    return paths


def unique_label(key: str) -> str:
    """How errors name a unique_by key: the path below the item's first field (udp.cluster.name -> "cluster name")."""
    dotted = key.split("|")[0]
    return " ".join(dotted.split(".")[1:]) or dotted
