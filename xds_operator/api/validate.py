"""Parse and validate VirtualService documents into typed objects.

The spec is checked against the proto descriptors and their rules (see schema.py); the
few rules that span several fields and cannot be said in the schema follow at the end.
Every problem found is reported, each with the path of the field it concerns.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from xds_operator.api import virtualservice_pb2 as pb
from xds_operator.api.model import EpochNanos, VirtualService
from xds_operator.api.schema import (
    API_GROUP,
    API_VERSION,
    INTEGER_TYPES,
    KIND,
    descriptor_of,
    field_rules,
    integer_bounds,
    is_map,
    is_repeated,
    message_rules,
    unique_label,
)
from xds_operator.api.timestamps import datetime_nanoseconds, parse_rfc3339
from xds_operator.net import is_ip

# Kubernetes object names (DNS-1123 subdomain) and namespaces (DNS-1123 label).
NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
METADATA_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "generation",
        "creationTimestamp",
        "uid",
        "resourceVersion",
        "labels",
        "annotations",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "selfLink",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
MAX_SUGGESTED_KEY = 100  # an unknown key longer than this gets no "did you mean"
# A document can hold thousands of problems (say, 10,000 invalid listeners): the message lists the first
# few, so a log line or a status condition stays readable.
MAX_REPORTED_ERRORS = 20
SHOWN_CHARACTERS = 60  # values quoted in messages are cut to this


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ValidationError(ValueError):
    """A document is not a valid VirtualService; `errors` lists every problem found."""

    def __init__(self, errors: Iterable[FieldError]):
        self.errors = _capped(list(errors))
        super().__init__("; ".join(str(e) for e in self.errors))


def _capped(errors: list[FieldError]) -> list[FieldError]:
    """The first MAX_REPORTED_ERRORS problems; the last one shown says how many more there are."""
    if len(errors) <= MAX_REPORTED_ERRORS:
        return errors
    last = errors[MAX_REPORTED_ERRORS - 1]
    more = len(errors) - MAX_REPORTED_ERRORS
    return [*errors[: MAX_REPORTED_ERRORS - 1], FieldError(last.path, f"{last.message} (and {more} more problems)")]


def parse_virtual_service(document: Any, *, origin: str = "") -> VirtualService:
    """Validate one decoded VirtualService document (a mapping, as from YAML or JSON)."""
    errors: list[FieldError] = []
    if not isinstance(document, Mapping):
        raise ValidationError([FieldError("(document)", f"expected a mapping, got {_type_name(document)}")])
    expected_api = f"{API_GROUP}/{API_VERSION}"
    if document.get("apiVersion") != expected_api:
        errors.append(FieldError("apiVersion", f"must be {expected_api!r}, got {_shown(document.get('apiVersion'))}"))
    if document.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND!r}, got {_shown(document.get('kind'))}"))
    for key in document:
        if key not in TOP_LEVEL_FIELDS:
            errors.append(FieldError(_key_text(key), _unknown_field(key, TOP_LEVEL_FIELDS)))
    metadata = _check_metadata(document.get("metadata"), errors)
    created = _creation_time(metadata.get("creationTimestamp"), errors)
    spec = parse_spec(document.get("spec"), errors=errors)
    if errors:
        raise ValidationError(errors)
    return VirtualService(
        namespace=metadata.get("namespace") or "default",
        name=metadata["name"],
        spec=spec,
        generation=int(metadata.get("generation") or 0),
        created=created,
        uid=metadata.get("uid") or "",
        origin=origin,
    )


def parse_spec(data: Any, *, path: str = "spec", errors: list[FieldError] | None = None) -> pb.VirtualServiceSpec:
    """Validate a spec mapping into a VirtualServiceSpec.

    With `errors` given, problems are appended there; otherwise ValidationError is raised.
    """
    collected: list[FieldError] = [] if errors is None else errors
    spec = pb.VirtualServiceSpec()
    if data is None:
        collected.append(FieldError(path, "required"))
    else:
        _fill(spec, data, path, collected)
        _check_cross_field_rules(spec, path, collected)  # skips fields left unset by errors above
    if errors is None and collected:
        raise ValidationError(collected)
    return spec


def _check_metadata(metadata: Any, errors: list[FieldError]) -> Mapping[str, Any]:
    if not isinstance(metadata, Mapping):
        errors.append(FieldError("metadata", "required" if metadata is None else "expected an object"))
        return {}
    for key in metadata:
        if key not in METADATA_FIELDS:
            errors.append(FieldError(f"metadata.{_key_text(key)}", _unknown_field(key, METADATA_FIELDS)))
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "required"))
    elif len(name) > 253 or not NAME_PATTERN.fullmatch(name):
        errors.append(FieldError("metadata.name", f"{_shown(name)} is not a valid Kubernetes object name"))
    generation = metadata.get("generation")
    if generation is not None and (isinstance(generation, bool) or not isinstance(generation, int)):
        errors.append(FieldError("metadata.generation", f"expected an integer, got {_type_name(generation)}"))
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not NAMESPACE_PATTERN.fullmatch(namespace)
    ):
        errors.append(FieldError("metadata.namespace", f"{_shown(namespace)} is not a valid namespace"))
    # Read into the model below (identity): only its type matters here.
    uid = metadata.get("uid")
    if uid is not None and not isinstance(uid, str):
        errors.append(FieldError("metadata.uid", f"expected a string, got {_type_name(uid)}"))
    return metadata


def _fill(message: Message, data: Any, path: str, errors: list[FieldError]) -> None:
    """Copy `data` into `message`, checking it against the descriptor and its rules."""
    descriptor = descriptor_of(message)
    if not isinstance(data, Mapping):
        errors.append(FieldError(path, f"expected an object, got {_type_name(data)}"))
        return
    for key in data:
        if not isinstance(key, str) or key not in descriptor.fields_by_name:
            errors.append(FieldError(f"{path}.{_key_text(key)}", _unknown_field(key, descriptor.fields_by_name)))
    for field in descriptor.fields:
        _fill_field(message, field, data.get(field.name), f"{path}.{field.name}", errors)
    choices = list(message_rules(descriptor).exactly_one_of)
    if choices:
        present = [name for name in choices if _is_set(data.get(name))]
        if len(present) != 1:
            errors.append(FieldError(path, f"set exactly one of {', '.join(choices)}"))
            for name in choices:  # so later checks (uniqueness) do not blame other items for this one
                message.ClearField(name)
    exclusive = list(message_rules(descriptor).at_most_one_of)
    if len([name for name in exclusive if _is_set(data.get(name))]) > 1:
        errors.append(FieldError(path, f"set at most one of {', '.join(exclusive)}"))


def _fill_field(message: Message, field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> None:
    rules = field_rules(field)
    if value is None:  # absent, or an explicit YAML null
        if rules.required:
            errors.append(FieldError(path, "required"))
        elif rules.default:
            setattr(message, field.name, rules.default)
        return
    if is_map(field):
        _fill_map(getattr(message, field.name), value, path, rules.required, errors)
    elif is_repeated(field):
        _fill_repeated(message, field, value, path, errors)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        child = getattr(message, field.name)
        child.SetInParent()
        _fill(child, value, path, errors)
    else:
        checked = _check_scalar(field, value, path, errors)
        if checked is not None:
            setattr(message, field.name, checked)


def _fill_map(target: Any, value: Any, path: str, required: bool, errors: list[FieldError]) -> None:
    if not isinstance(value, Mapping):
        errors.append(FieldError(path, f"expected an object of strings, got {_type_name(value)}"))
        return
    if required and not value:
        errors.append(FieldError(path, "must not be empty"))
    for key, item in value.items():
        here = f"{path}.{_key_text(key)}"
        if not isinstance(key, str) or not key:
            errors.append(FieldError(here, "keys must be non-empty strings"))
        elif not _is_unicode(key):
            errors.append(FieldError(here, NOT_UNICODE))
        elif not isinstance(item, str):
            errors.append(FieldError(here, f"expected a string, got {_type_name(item)}"))
        elif not _is_unicode(item):
            errors.append(FieldError(here, NOT_UNICODE))
        else:
            target[key] = item


def _fill_repeated(message: Message, field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> None:
    rules = field_rules(field)
    if not isinstance(value, list):
        errors.append(FieldError(path, f"expected a list, got {_type_name(value)}"))
        return
    if rules.required and not value:
        errors.append(FieldError(path, "must have at least one item"))
    if rules.max_items and len(value) > rules.max_items:
        # One error, not one per item: the items of an oversized list are not looked at.
        errors.append(FieldError(path, f"must have at most {rules.max_items} items, got {len(value)}"))
        return
    container = getattr(message, field.name)
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _fill(container.add(), item, item_path, errors)
        else:
            checked = _check_scalar(field, item, item_path, errors)
            if checked is not None:
                container.append(checked)
    for key in rules.unique_by:
        _check_unique(container, key, path, errors)


def _check_unique(items: Any, key: str, path: str, errors: list[FieldError]) -> None:
    """Report items whose `key` (a dotted path, or alternatives joined by |) repeats an earlier item's.

    Unset or invalid values don't count.
    """
    label = unique_label(key)
    seen: dict[Any, int] = {}
    for index, item in enumerate(items):
        found = next(((dotted, v) for dotted in key.split("|") if (v := _value_at(item, dotted)) is not None), None)
        if found is None:
            continue
        dotted, value = found
        if value in seen:
            errors.append(
                FieldError(f"{path}[{index}].{dotted}", f"duplicate {label} {value!r} (also in {path}[{seen[value]}])")
            )
        else:
            seen[value] = index


def _value_at(message: Message, dotted: str) -> Any:
    """The value at a dotted path of a filled message, or None where a field on the way is unset."""
    value: Any = message
    for name in dotted.split("."):
        field = value.DESCRIPTOR.fields_by_name[name]
        if (field.message_type is not None or field.has_presence) and not value.HasField(name):
            return None
        value = getattr(value, name)
    return value if value not in ("", 0) else None  # proto3 zero values: unset, or rejected by the checks above


def _check_scalar(field: FieldDescriptor, value: Any, path: str, errors: list[FieldError]) -> Any:
    """Return the value if it fits the field's type and rules, else record why and return None."""
    rules = field_rules(field)
    if field.type in INTEGER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(FieldError(path, f"expected an integer, got {_type_name(value)}"))
            return None
        low, high = integer_bounds(field)
        if value < low:
            errors.append(FieldError(path, f"must be at least {low}, got {_shown(value)}"))
            return None
        if value > high:
            errors.append(FieldError(path, f"must be at most {high}, got {_shown(value)}"))
            return None
        return value
    if field.type == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            errors.append(FieldError(path, f"expected a string, got {_type_name(value)}"))
            return None
        if not value:
            errors.append(FieldError(path, "must not be empty"))
            return None
        if rules.enum and value not in rules.enum:
            errors.append(FieldError(path, f"must be one of {', '.join(rules.enum)}; got {value!r}"))
            return None
        if rules.max_length and len(value) > rules.max_length:
            errors.append(FieldError(path, f"must be at most {rules.max_length} characters, got {len(value)}"))
            return None
        if rules.pattern and not _compiled(rules.pattern).fullmatch(value):
            errors.append(FieldError(path, f"{_shown(value)} must match {rules.pattern}"))
            return None
        if not _is_unicode(value):
            errors.append(FieldError(path, NOT_UNICODE))
            return None
        return value
    if field.type == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            errors.append(FieldError(path, f"expected true or false, got {_type_name(value)}"))
            return None
        return value
    raise TypeError(f"{path}: the API uses a field type the validator does not know ({field.type})")


def _check_cross_field_rules(spec: pb.VirtualServiceSpec, path: str, errors: list[FieldError]) -> None:
    """Rules the proto options cannot say: eds clusters need IP endpoints.

    (Unique names and ports across listeners are FieldRules.unique_by, checked while filling.)
    """
    for index, listener in enumerate(spec.listeners):
        protocol = listener.WhichOneof("protocol")
        if protocol is None:  # already reported
            continue
        cluster = getattr(listener, protocol).cluster
        here = f"{path}.listeners[{index}].{protocol}"
        if cluster.service_discovery == "eds":
            for position, endpoint in enumerate(cluster.endpoints):
                if endpoint.host.HasField("address") and not is_ip(endpoint.host.address):
                    errors.append(
                        FieldError(
                            f"{here}.cluster.endpoints[{position}].host.address",
                            f"{endpoint.host.address!r} is not an IP address; eds clusters need IP addresses "
                            "(use service_discovery: strictdns for DNS names)",
                        )
                    )


TIMESTAMP_PATH = "metadata.creationTimestamp"
RFC3339_EXAMPLE = "expected for example 2024-01-02T15:04:05Z"


def _creation_time(value: Any, errors: list[FieldError]) -> EpochNanos | None:
    """metadata.creationTimestamp as nanoseconds since the epoch, so ages compare as instants, not as text.

    A string must be an RFC 3339 date-time; YAML turns an unquoted one into a datetime, accepted
    when it says its time zone."""
    if value is None:
        return None
    if isinstance(value, datetime):
        try:
            return datetime_nanoseconds(value)
        except ValueError:
            errors.append(FieldError(TIMESTAMP_PATH, "the date-time has no time zone offset (add Z for UTC)"))
            return None
    if isinstance(value, date):
        errors.append(FieldError(TIMESTAMP_PATH, f"{value} is a date without a time; {RFC3339_EXAMPLE}"))
        return None
    if not isinstance(value, str):
        errors.append(FieldError(TIMESTAMP_PATH, f"expected a timestamp, got {_type_name(value)}"))
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        errors.append(FieldError(TIMESTAMP_PATH, f"{_shown(value)} is not an RFC 3339 date-time; {RFC3339_EXAMPLE}"))
        return None


NOT_UNICODE = "not valid Unicode text (it holds a lone surrogate)"


def _is_unicode(text: str) -> bool:
    """Whether the text can be encoded as UTF-8, as every proto string must be (JSON can say "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shortened(text: str) -> str:
    """Text as quoted in a message: cut to SHOWN_CHARACTERS, the cut marked with "..."."""
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "..."


def _shown(value: Any) -> str:
    """A value as quoted in a message: short, and never the repr of a container (it may be huge or deep)."""
    if isinstance(value, str):
        return repr(shortened(value))
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**SHOWN_CHARACTERS:
        return f"an integer of more than {SHOWN_CHARACTERS} digits"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return _type_name(value)


def _unknown_field(key: Any, known: Iterable[str]) -> str:
    """`unknown field`, with the closest known name if one is close: `serviceDiscovery` → service_discovery."""
    if isinstance(key, str) and len(key) <= MAX_SUGGESTED_KEY:  # difflib's cost grows with the length
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        if close:
            return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field"


def _key_text(key: Any) -> str:
    """A mapping key as a path segment (keys of YAML mappings may be any scalar)."""
    if isinstance(key, str):
        return shortened(key)
    return _shown(key)


def _is_set(value: Any) -> bool:
    return value is not None and value != {} and value != ""


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
