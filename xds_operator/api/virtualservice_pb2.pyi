from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
FIELD_FIELD_NUMBER: _ClassVar[int]
field: _descriptor.FieldDescriptor
MESSAGE_FIELD_NUMBER: _ClassVar[int]
message: _descriptor.FieldDescriptor

class FieldRules(_message.Message):
    __slots__ = ("required", "minimum", "maximum", "enum", "default", "unique_by", "pattern", "max_length", "description", "max_items")
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    ENUM_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_BY_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    required: bool
    minimum: int
    maximum: int
    enum: _containers.RepeatedScalarFieldContainer[str]
    default: str
    unique_by: _containers.RepeatedScalarFieldContainer[str]
    pattern: str
    max_length: int
    description: str
    max_items: int
    def __init__(self, required: _Optional[bool] = ..., minimum: _Optional[int] = ..., maximum: _Optional[int] = ..., enum: _Optional[_Iterable[str]] = ..., default: _Optional[str] = ..., unique_by: _Optional[_Iterable[str]] = ..., pattern: _Optional[str] = ..., max_length: _Optional[int] = ..., description: _Optional[str] = ..., max_items: _Optional[int] = ...) -> None: ...

class MessageRules(_message.Message):
    __slots__ = ("exactly_one_of", "description", "at_most_one_of")
    EXACTLY_ONE_OF_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AT_MOST_ONE_OF_FIELD_NUMBER: _ClassVar[int]
    exactly_one_of: _containers.RepeatedScalarFieldContainer[str]
    description: str
    at_most_one_of: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, exactly_one_of: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., at_most_one_of: _Optional[_Iterable[str]] = ...) -> None: ...

class VirtualServiceSpec(_message.Message):
    __slots__ = ("selector", "listeners")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    LISTENERS_FIELD_NUMBER: _ClassVar[int]
    selector: _containers.ScalarMap[str, str]
    listeners: _containers.RepeatedCompositeFieldContainer[Listener]
    def __init__(self, selector: _Optional[_Mapping[str, str]] = ..., listeners: _Optional[_Iterable[_Union[Listener, _Mapping]]] = ...) -> None: ...

class Listener(_message.Message):
    __slots__ = ("name", "udp", "tcp")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UDP_FIELD_NUMBER: _ClassVar[int]
    TCP_FIELD_NUMBER: _ClassVar[int]
    name: str
    udp: UdpListener
    tcp: TcpListener
    def __init__(self, name: _Optional[str] = ..., udp: _Optional[_Union[UdpListener, _Mapping]] = ..., tcp: _Optional[_Union[TcpListener, _Mapping]] = ...) -> None: ...

class UdpListener(_message.Message):
    __slots__ = ("port", "cluster", "idle_timeout", "max_sessions")
    PORT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    port: int
    cluster: Cluster
    idle_timeout: int
    max_sessions: int
    def __init__(self, port: _Optional[int] = ..., cluster: _Optional[_Union[Cluster, _Mapping]] = ..., idle_timeout: _Optional[int] = ..., max_sessions: _Optional[int] = ...) -> None: ...

class TcpListener(_message.Message):
    __slots__ = ("port", "cluster", "idle_timeout", "max_sessions")
    PORT_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    port: int
    cluster: Cluster
    idle_timeout: int
    max_sessions: int
    def __init__(self, port: _Optional[int] = ..., cluster: _Optional[_Union[Cluster, _Mapping]] = ..., idle_timeout: _Optional[int] = ..., max_sessions: _Optional[int] = ...) -> None: ...

class Cluster(_message.Message):
    __slots__ = ("name", "service_discovery", "hash_key", "health_check", "endpoints", "hash_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    HASH_KEY_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    HASH_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    service_discovery: str
    hash_key: str
    health_check: HealthCheck
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    hash_by: str
    def __init__(self, name: _Optional[str] = ..., service_discovery: _Optional[str] = ..., hash_key: _Optional[str] = ..., health_check: _Optional[_Union[HealthCheck, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., hash_by: _Optional[str] = ...) -> None: ...

class HealthCheck(_message.Message):
    __slots__ = ("protocol", "interval")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    interval: int
    def __init__(self, protocol: _Optional[str] = ..., interval: _Optional[int] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("name", "host", "port", "health_check_port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: Host
    port: int
    health_check_port: int
    def __init__(self, name: _Optional[str] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., port: _Optional[int] = ..., health_check_port: _Optional[int] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("address", "selector")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    address: str
    selector: _containers.ScalarMap[str, str]
    def __init__(self, address: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ...) -> None: ...
