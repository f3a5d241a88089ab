from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kvpark.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
REQUEST_API_ANTHROPIC: RequestApi
REQUEST_API_GRPC: RequestApi
REQUEST_API_OPENAI: RequestApi
REQUEST_API_UNSPECIFIED: RequestApi

class RecentRequest(_message.Message):
    __slots__ = ["api", "cache", "finish_reason", "finished_at", "tenant", "timings", "usage"]
    API_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    api: RequestApi
    cache: _inference_pb2.CacheReport
    finish_reason: _inference_pb2.FinishReason
    finished_at: _timestamp_pb2.Timestamp
    tenant: str
    timings: _inference_pb2.Timings
    usage: _inference_pb2.Usage
    def __init__(self, finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., api: _Optional[_Union[RequestApi, str]] = ..., finish_reason: _Optional[_Union[_inference_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_inference_pb2.Usage, _Mapping]] = ..., cache: _Optional[_Union[_inference_pb2.CacheReport, _Mapping]] = ..., timings: _Optional[_Union[_inference_pb2.Timings, _Mapping]] = ...) -> None: ...

class RecentRequestsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RecentRequestsResponse(_message.Message):
    __slots__ = ["all_tenants", "capacity", "requests"]
    ALL_TENANTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    all_tenants: bool
    capacity: int
    requests: _containers.RepeatedCompositeFieldContainer[RecentRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecentRequest, _Mapping]]] = ..., capacity: _Optional[int] = ..., all_tenants: bool = ...) -> None: ...

class RequestApi(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
