from kvpark.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
FINISH_REASON_CONTEXT_LIMIT: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_MAX_TOKENS: FinishReason
FINISH_REASON_STOP_STRING: FinishReason
FINISH_REASON_TOOL_CALLS: FinishReason
FINISH_REASON_UNSPECIFIED: FinishReason

class CacheOptions(_message.Message):
    __slots__ = ["persist", "pin", "pin_ttl_seconds"]
    PERSIST_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    PIN_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    persist: bool
    pin: _common_pb2.PinKind
    pin_ttl_seconds: int
    def __init__(self, persist: bool = ..., pin: _Optional[_Union[_common_pb2.PinKind, str]] = ..., pin_ttl_seconds: _Optional[int] = ...) -> None: ...

class CacheReport(_message.Message):
    __slots__ = ["corrupt_blocks", "diverged_tokens", "ram_tokens", "recompute_chosen_tokens", "recomputed_tokens", "shared_tokens", "ssd_tokens"]
    CORRUPT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTE_CHOSEN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SHARED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SSD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    corrupt_blocks: int
    diverged_tokens: int
    ram_tokens: int
    recompute_chosen_tokens: int
    recomputed_tokens: int
    shared_tokens: int
    ssd_tokens: int
    def __init__(self, ram_tokens: _Optional[int] = ..., ssd_tokens: _Optional[int] = ..., recomputed_tokens: _Optional[int] = ..., recompute_chosen_tokens: _Optional[int] = ..., corrupt_blocks: _Optional[int] = ..., diverged_tokens: _Optional[int] = ..., shared_tokens: _Optional[int] = ...) -> None: ...

class GenerateFinished(_message.Message):
    __slots__ = ["finish_reason", "timings", "usage"]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    timings: Timings
    usage: Usage
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ["cache", "handle", "model", "prompt", "sampling"]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    cache: CacheOptions
    handle: str
    model: str
    prompt: _common_pb2.Prompt
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ..., handle: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., cache: _Optional[_Union[CacheOptions, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ["delta", "finished", "progress", "reasoning", "started", "tool_call"]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    delta: TokenDelta
    finished: GenerateFinished
    progress: PrefillProgress
    reasoning: ReasoningDelta
    started: GenerateStarted
    tool_call: _common_pb2.ToolCall
    def __init__(self, started: _Optional[_Union[GenerateStarted, _Mapping]] = ..., delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., finished: _Optional[_Union[GenerateFinished, _Mapping]] = ..., progress: _Optional[_Union[PrefillProgress, _Mapping]] = ..., tool_call: _Optional[_Union[_common_pb2.ToolCall, _Mapping]] = ..., reasoning: _Optional[_Union[ReasoningDelta, _Mapping]] = ...) -> None: ...

class GenerateStarted(_message.Message):
    __slots__ = ["cache", "model", "model_fingerprint", "prompt_tokens"]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    cache: CacheReport
    model: str
    model_fingerprint: str
    prompt_tokens: int
    def __init__(self, model: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., cache: _Optional[_Union[CacheReport, _Mapping]] = ...) -> None: ...

class JsonObjectFormat(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class JsonSchemaFormat(_message.Message):
    __slots__ = ["name", "schema_json", "strict"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    STRICT_FIELD_NUMBER: _ClassVar[int]
    name: str
    schema_json: str
    strict: bool
    def __init__(self, name: _Optional[str] = ..., schema_json: _Optional[str] = ..., strict: bool = ...) -> None: ...

class PrefillProgress(_message.Message):
    __slots__ = ["prompt_tokens_done", "prompt_tokens_total"]
    PROMPT_TOKENS_DONE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens_done: int
    prompt_tokens_total: int
    def __init__(self, prompt_tokens_done: _Optional[int] = ..., prompt_tokens_total: _Optional[int] = ...) -> None: ...

class PrefillStreamRequest(_message.Message):
    __slots__ = ["cache", "handle", "text", "tokens"]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    cache: CacheOptions
    handle: str
    text: str
    tokens: _common_pb2.TokenIds
    def __init__(self, handle: _Optional[str] = ..., text: _Optional[str] = ..., tokens: _Optional[_Union[_common_pb2.TokenIds, _Mapping]] = ..., cache: _Optional[_Union[CacheOptions, _Mapping]] = ...) -> None: ...

class PrefillStreamResponse(_message.Message):
    __slots__ = ["blocks_persisted", "handle", "tokens_prefilled", "tokens_received", "tokens_reused"]
    BLOCKS_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PREFILLED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REUSED_FIELD_NUMBER: _ClassVar[int]
    blocks_persisted: int
    handle: str
    tokens_prefilled: int
    tokens_received: int
    tokens_reused: int
    def __init__(self, tokens_received: _Optional[int] = ..., tokens_prefilled: _Optional[int] = ..., tokens_reused: _Optional[int] = ..., blocks_persisted: _Optional[int] = ..., handle: _Optional[str] = ...) -> None: ...

class ReasoningDelta(_message.Message):
    __slots__ = ["text", "token_ids"]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class ResponseFormat(_message.Message):
    __slots__ = ["json_object", "json_schema", "text"]
    JSON_OBJECT_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    json_object: JsonObjectFormat
    json_schema: JsonSchemaFormat
    text: TextFormat
    def __init__(self, text: _Optional[_Union[TextFormat, _Mapping]] = ..., json_object: _Optional[_Union[JsonObjectFormat, _Mapping]] = ..., json_schema: _Optional[_Union[JsonSchemaFormat, _Mapping]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ["max_tokens", "response_format", "seed", "stop", "temperature", "top_k", "top_p"]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    response_format: ResponseFormat
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    temperature: float
    top_k: int
    top_p: float
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., response_format: _Optional[_Union[ResponseFormat, _Mapping]] = ...) -> None: ...

class TextFormat(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class Timings(_message.Message):
    __slots__ = ["decode_tokens_per_second", "first_token_ipc_ms", "lookup_ms", "prefill_ms", "queue_ms", "restore_import_ms", "restore_ms", "restore_ram_ms", "restore_shared_read_wait_ms", "restore_ssd_read_wait_ms", "restore_stage_ms", "restore_verify_ms", "total_ms", "ttft_ms"]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_IPC_MS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_MS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_IMPORT_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_RAM_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_SHARED_READ_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_SSD_READ_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_STAGE_MS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_VERIFY_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    decode_tokens_per_second: float
    first_token_ipc_ms: float
    lookup_ms: float
    prefill_ms: float
    queue_ms: float
    restore_import_ms: float
    restore_ms: float
    restore_ram_ms: float
    restore_shared_read_wait_ms: float
    restore_ssd_read_wait_ms: float
    restore_stage_ms: float
    restore_verify_ms: float
    total_ms: float
    ttft_ms: float
    def __init__(self, ttft_ms: _Optional[float] = ..., lookup_ms: _Optional[float] = ..., restore_ms: _Optional[float] = ..., prefill_ms: _Optional[float] = ..., decode_tokens_per_second: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., restore_ram_ms: _Optional[float] = ..., restore_ssd_read_wait_ms: _Optional[float] = ..., restore_shared_read_wait_ms: _Optional[float] = ..., restore_verify_ms: _Optional[float] = ..., restore_stage_ms: _Optional[float] = ..., restore_import_ms: _Optional[float] = ..., first_token_ipc_ms: _Optional[float] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ["text", "token_ids"]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ["cached_tokens", "completion_tokens", "prompt_tokens"]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    cached_tokens: int
    completion_tokens: int
    prompt_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
