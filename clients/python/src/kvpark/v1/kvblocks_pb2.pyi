from kvpark.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

BLOCK_ERROR_CODE_CAPACITY: BlockErrorCode
BLOCK_ERROR_CODE_CORRUPT: BlockErrorCode
BLOCK_ERROR_CODE_INVALID_PAYLOAD: BlockErrorCode
BLOCK_ERROR_CODE_KEY_MISMATCH: BlockErrorCode
BLOCK_ERROR_CODE_MODEL_MISMATCH: BlockErrorCode
BLOCK_ERROR_CODE_NOT_FOUND: BlockErrorCode
BLOCK_ERROR_CODE_PARENT_MISSING: BlockErrorCode
BLOCK_ERROR_CODE_SHAPE_MISMATCH: BlockErrorCode
BLOCK_ERROR_CODE_UNSPECIFIED: BlockErrorCode
BLOCK_ERROR_CODE_UNSUPPORTED_VERSION: BlockErrorCode
DESCRIPTOR: _descriptor.FileDescriptor

class BlockError(_message.Message):
    __slots__ = ["code", "message"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: BlockErrorCode
    message: str
    def __init__(self, code: _Optional[_Union[BlockErrorCode, str]] = ..., message: _Optional[str] = ...) -> None: ...

class BlockKeys(_message.Message):
    __slots__ = ["keys"]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BlockRef(_message.Message):
    __slots__ = ["key", "start_token", "tier", "token_count"]
    KEY_FIELD_NUMBER: _ClassVar[int]
    START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    start_token: int
    tier: _common_pb2.Tier
    token_count: int
    def __init__(self, key: _Optional[bytes] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., start_token: _Optional[int] = ..., token_count: _Optional[int] = ...) -> None: ...

class BlockRejection(_message.Message):
    __slots__ = ["error", "index", "key"]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    error: BlockError
    index: int
    key: bytes
    def __init__(self, index: _Optional[int] = ..., key: _Optional[bytes] = ..., error: _Optional[_Union[BlockError, _Mapping]] = ...) -> None: ...

class BlockSelector(_message.Message):
    __slots__ = ["keys", "prompt"]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    keys: BlockKeys
    prompt: _common_pb2.Prompt
    def __init__(self, keys: _Optional[_Union[BlockKeys, _Mapping]] = ..., prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ...) -> None: ...

class EngineStats(_message.Message):
    __slots__ = ["decode_batch", "memory_max_bytes", "memory_reserved_bytes", "rss_bytes", "sequences_running", "sequences_waiting", "steps"]
    DECODE_BATCH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_WAITING_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    decode_batch: int
    memory_max_bytes: int
    memory_reserved_bytes: int
    rss_bytes: int
    sequences_running: int
    sequences_waiting: int
    steps: int
    def __init__(self, rss_bytes: _Optional[int] = ..., memory_max_bytes: _Optional[int] = ..., memory_reserved_bytes: _Optional[int] = ..., sequences_running: _Optional[int] = ..., sequences_waiting: _Optional[int] = ..., decode_batch: _Optional[int] = ..., steps: _Optional[int] = ...) -> None: ...

class GetBlocksRequest(_message.Message):
    __slots__ = ["keys"]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetBlocksResponse(_message.Message):
    __slots__ = ["block", "error", "key"]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    block: KVBlock
    error: BlockError
    key: bytes
    def __init__(self, key: _Optional[bytes] = ..., block: _Optional[_Union[KVBlock, _Mapping]] = ..., error: _Optional[_Union[BlockError, _Mapping]] = ...) -> None: ...

class KVBlock(_message.Message):
    __slots__ = ["dtype", "format_version", "key", "layer_count", "model_fingerprint", "parent_key", "payload", "payload_sha256", "shape", "token_ids"]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    format_version: int
    key: bytes
    layer_count: int
    model_fingerprint: str
    parent_key: bytes
    payload: bytes
    payload_sha256: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, format_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., key: _Optional[bytes] = ..., parent_key: _Optional[bytes] = ..., token_ids: _Optional[_Iterable[int]] = ..., layer_count: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., payload: _Optional[bytes] = ..., payload_sha256: _Optional[bytes] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ["prompt"]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: _common_pb2.Prompt
    def __init__(self, prompt: _Optional[_Union[_common_pb2.Prompt, _Mapping]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ["blocks", "cached_tokens", "prompt_tokens", "ram_tokens", "ssd_tokens"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SSD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    cached_tokens: int
    prompt_tokens: int
    ram_tokens: int
    ssd_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., ram_tokens: _Optional[int] = ..., ssd_tokens: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ["blocks", "kind", "ttl_seconds"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    blocks: BlockSelector
    kind: _common_pb2.PinKind
    ttl_seconds: int
    def __init__(self, blocks: _Optional[_Union[BlockSelector, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.PinKind, str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ["hard_pin_quota_bytes", "hard_pinned_bytes", "missing_keys", "pinned_blocks"]
    HARD_PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HARD_PIN_QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    hard_pin_quota_bytes: int
    hard_pinned_bytes: int
    missing_keys: _containers.RepeatedScalarFieldContainer[bytes]
    pinned_blocks: int
    def __init__(self, pinned_blocks: _Optional[int] = ..., missing_keys: _Optional[_Iterable[bytes]] = ..., hard_pinned_bytes: _Optional[int] = ..., hard_pin_quota_bytes: _Optional[int] = ...) -> None: ...

class PutBlocksRequest(_message.Message):
    __slots__ = ["block"]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    block: KVBlock
    def __init__(self, block: _Optional[_Union[KVBlock, _Mapping]] = ...) -> None: ...

class PutBlocksResponse(_message.Message):
    __slots__ = ["accepted", "rejected"]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: _containers.RepeatedCompositeFieldContainer[BlockRejection]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[BlockRejection, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ["block_tokens", "corrupt_blocks", "engine", "model_fingerprint", "ram", "ssd", "ssd_quarantined_segments", "write_errors", "write_errors_eio", "write_errors_enospc", "write_errors_other", "write_queue_depth", "write_skips"]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RAM_FIELD_NUMBER: _ClassVar[int]
    SSD_FIELD_NUMBER: _ClassVar[int]
    SSD_QUARANTINED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_EIO_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_ENOSPC_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_OTHER_FIELD_NUMBER: _ClassVar[int]
    WRITE_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    WRITE_SKIPS_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    corrupt_blocks: int
    engine: EngineStats
    model_fingerprint: str
    ram: TierStats
    ssd: TierStats
    ssd_quarantined_segments: int
    write_errors: int
    write_errors_eio: int
    write_errors_enospc: int
    write_errors_other: int
    write_queue_depth: int
    write_skips: int
    def __init__(self, ram: _Optional[_Union[TierStats, _Mapping]] = ..., ssd: _Optional[_Union[TierStats, _Mapping]] = ..., block_tokens: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., write_queue_depth: _Optional[int] = ..., write_skips: _Optional[int] = ..., corrupt_blocks: _Optional[int] = ..., write_errors: _Optional[int] = ..., write_errors_enospc: _Optional[int] = ..., write_errors_eio: _Optional[int] = ..., write_errors_other: _Optional[int] = ..., ssd_quarantined_segments: _Optional[int] = ..., engine: _Optional[_Union[EngineStats, _Mapping]] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ["blocks", "bytes", "bytes_max", "evictions", "hits", "misses", "pinned_blocks"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    bytes_max: int
    evictions: int
    hits: int
    misses: int
    pinned_blocks: int
    def __init__(self, bytes: _Optional[int] = ..., bytes_max: _Optional[int] = ..., blocks: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., pinned_blocks: _Optional[int] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ["blocks"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: BlockSelector
    def __init__(self, blocks: _Optional[_Union[BlockSelector, _Mapping]] = ...) -> None: ...

class UnpinResponse(_message.Message):
    __slots__ = ["unpinned_blocks"]
    UNPINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    unpinned_blocks: int
    def __init__(self, unpinned_blocks: _Optional[int] = ...) -> None: ...

class BlockErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
