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

class BundleBlock(_message.Message):
    __slots__ = ["key", "parent_key", "payload_sha256", "token_count"]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    parent_key: bytes
    payload_sha256: bytes
    token_count: int
    def __init__(self, key: _Optional[bytes] = ..., parent_key: _Optional[bytes] = ..., token_count: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ...) -> None: ...

class BundleHeader(_message.Message):
    __slots__ = ["block_tokens", "created_unix_ms", "format_version", "head_dim", "kv_heads", "layer_count", "layer_kinds", "model_fingerprint", "snapshot_conv_shape", "snapshot_delta_shape"]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYER_KINDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CONV_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DELTA_SHAPE_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    created_unix_ms: int
    format_version: int
    head_dim: int
    kv_heads: int
    layer_count: int
    layer_kinds: _containers.RepeatedScalarFieldContainer[str]
    model_fingerprint: str
    snapshot_conv_shape: _containers.RepeatedScalarFieldContainer[int]
    snapshot_delta_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, format_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., block_tokens: _Optional[int] = ..., layer_count: _Optional[int] = ..., kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., layer_kinds: _Optional[_Iterable[str]] = ..., snapshot_conv_shape: _Optional[_Iterable[int]] = ..., snapshot_delta_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BundleManifest(_message.Message):
    __slots__ = ["block_tokens", "blocks", "entries_sha256", "entry_count", "format_version", "model_fingerprint", "skipped_blocks"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENTRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    blocks: _containers.RepeatedCompositeFieldContainer[BundleBlock]
    entries_sha256: bytes
    entry_count: int
    format_version: int
    model_fingerprint: str
    skipped_blocks: int
    def __init__(self, format_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., block_tokens: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BundleBlock, _Mapping]]] = ..., entry_count: _Optional[int] = ..., entries_sha256: _Optional[bytes] = ..., skipped_blocks: _Optional[int] = ...) -> None: ...

class CachedBlock(_message.Message):
    __slots__ = ["bytes", "key", "last_used_unix_ms", "parent_key", "pin", "pin_expires_unix_ms", "ssd_bytes", "tenant", "tiers", "token_count"]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PIN_EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    SSD_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    key: bytes
    last_used_unix_ms: int
    parent_key: bytes
    pin: _common_pb2.PinKind
    pin_expires_unix_ms: int
    ssd_bytes: int
    tenant: str
    tiers: _containers.RepeatedScalarFieldContainer[_common_pb2.Tier]
    token_count: int
    def __init__(self, key: _Optional[bytes] = ..., parent_key: _Optional[bytes] = ..., tiers: _Optional[_Iterable[_Union[_common_pb2.Tier, str]]] = ..., token_count: _Optional[int] = ..., bytes: _Optional[int] = ..., ssd_bytes: _Optional[int] = ..., pin: _Optional[_Union[_common_pb2.PinKind, str]] = ..., pin_expires_unix_ms: _Optional[int] = ..., last_used_unix_ms: _Optional[int] = ..., tenant: _Optional[str] = ...) -> None: ...

class ClearRequest(_message.Message):
    __slots__ = ["all_tenants"]
    ALL_TENANTS_FIELD_NUMBER: _ClassVar[int]
    all_tenants: bool
    def __init__(self, all_tenants: bool = ...) -> None: ...

class ClearResponse(_message.Message):
    __slots__ = ["ram_bytes_freed", "removed_blocks", "ssd_bytes_freed", "unpinned_blocks"]
    RAM_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SSD_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    UNPINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ram_bytes_freed: int
    removed_blocks: int
    ssd_bytes_freed: int
    unpinned_blocks: int
    def __init__(self, removed_blocks: _Optional[int] = ..., unpinned_blocks: _Optional[int] = ..., ram_bytes_freed: _Optional[int] = ..., ssd_bytes_freed: _Optional[int] = ...) -> None: ...

class EngineStats(_message.Message):
    __slots__ = ["allocator_active_bytes", "allocator_kept_bytes", "allocator_purges", "decode_batch", "memory_max_bytes", "memory_reserved_bytes", "rss_bytes", "sequences_running", "sequences_waiting", "steps"]
    ALLOCATOR_ACTIVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATOR_KEPT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOCATOR_PURGES_FIELD_NUMBER: _ClassVar[int]
    DECODE_BATCH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_WAITING_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    allocator_active_bytes: int
    allocator_kept_bytes: int
    allocator_purges: int
    decode_batch: int
    memory_max_bytes: int
    memory_reserved_bytes: int
    rss_bytes: int
    sequences_running: int
    sequences_waiting: int
    steps: int
    def __init__(self, rss_bytes: _Optional[int] = ..., memory_max_bytes: _Optional[int] = ..., memory_reserved_bytes: _Optional[int] = ..., sequences_running: _Optional[int] = ..., sequences_waiting: _Optional[int] = ..., decode_batch: _Optional[int] = ..., steps: _Optional[int] = ..., allocator_active_bytes: _Optional[int] = ..., allocator_kept_bytes: _Optional[int] = ..., allocator_purges: _Optional[int] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ["blocks", "force", "tier"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    blocks: BlockSelector
    force: bool
    tier: _common_pb2.Tier
    def __init__(self, blocks: _Optional[_Union[BlockSelector, _Mapping]] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., force: bool = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ["evicted_blocks", "missing_keys", "ram_bytes_freed", "skipped_pinned_blocks", "ssd_bytes_freed"]
    EVICTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MISSING_KEYS_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SSD_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    evicted_blocks: int
    missing_keys: _containers.RepeatedScalarFieldContainer[bytes]
    ram_bytes_freed: int
    skipped_pinned_blocks: int
    ssd_bytes_freed: int
    def __init__(self, evicted_blocks: _Optional[int] = ..., skipped_pinned_blocks: _Optional[int] = ..., missing_keys: _Optional[_Iterable[bytes]] = ..., ram_bytes_freed: _Optional[int] = ..., ssd_bytes_freed: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ["blocks", "tenant"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    blocks: BlockSelector
    tenant: str
    def __init__(self, blocks: _Optional[_Union[BlockSelector, _Mapping]] = ..., tenant: _Optional[str] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ["data"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

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

class ImportRequest(_message.Message):
    __slots__ = ["data", "tenant"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    tenant: str
    def __init__(self, data: _Optional[bytes] = ..., tenant: _Optional[str] = ...) -> None: ...

class ImportResponse(_message.Message):
    __slots__ = ["blocks", "present_blocks", "stored_blocks", "tokens"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    STORED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    present_blocks: int
    stored_blocks: int
    tokens: int
    def __init__(self, blocks: _Optional[int] = ..., stored_blocks: _Optional[int] = ..., present_blocks: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class KVBlock(_message.Message):
    __slots__ = ["dtype", "format_version", "key", "layer_count", "layer_kinds", "model_fingerprint", "parent_key", "payload", "payload_sha256", "shape", "snapshot_conv_shape", "snapshot_delta_shape", "token_ids"]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYER_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYER_KINDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PARENT_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CONV_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DELTA_SHAPE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    format_version: int
    key: bytes
    layer_count: int
    layer_kinds: _containers.RepeatedScalarFieldContainer[str]
    model_fingerprint: str
    parent_key: bytes
    payload: bytes
    payload_sha256: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    snapshot_conv_shape: _containers.RepeatedScalarFieldContainer[int]
    snapshot_delta_shape: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, format_version: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., key: _Optional[bytes] = ..., parent_key: _Optional[bytes] = ..., token_ids: _Optional[_Iterable[int]] = ..., layer_count: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., payload: _Optional[bytes] = ..., payload_sha256: _Optional[bytes] = ..., layer_kinds: _Optional[_Iterable[str]] = ..., snapshot_conv_shape: _Optional[_Iterable[int]] = ..., snapshot_delta_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ListBlocksRequest(_message.Message):
    __slots__ = ["all_tenants", "page_size", "page_token"]
    ALL_TENANTS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    all_tenants: bool
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., all_tenants: bool = ...) -> None: ...

class ListBlocksResponse(_message.Message):
    __slots__ = ["blocks", "next_page_token", "total_blocks"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[CachedBlock]
    next_page_token: str
    total_blocks: int
    def __init__(self, blocks: _Optional[_Iterable[_Union[CachedBlock, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_blocks: _Optional[int] = ...) -> None: ...

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

class SharedTierStats(_message.Message):
    __slots__ = ["connected", "hits", "lost_blocks", "misses", "read_blocks", "read_bytes", "read_errors", "rejected_blocks", "request_seconds", "requests", "restore_bytes_per_second", "timeouts", "write_errors", "write_queue_depth", "write_skips", "written_blocks", "written_bytes"]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    LOST_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    READ_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_ERRORS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    WRITE_QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    WRITE_SKIPS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    hits: int
    lost_blocks: int
    misses: int
    read_blocks: int
    read_bytes: int
    read_errors: int
    rejected_blocks: int
    request_seconds: float
    requests: int
    restore_bytes_per_second: float
    timeouts: int
    write_errors: int
    write_queue_depth: int
    write_skips: int
    written_blocks: int
    written_bytes: int
    def __init__(self, connected: bool = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., read_blocks: _Optional[int] = ..., read_bytes: _Optional[int] = ..., written_blocks: _Optional[int] = ..., written_bytes: _Optional[int] = ..., write_skips: _Optional[int] = ..., write_errors: _Optional[int] = ..., write_queue_depth: _Optional[int] = ..., read_errors: _Optional[int] = ..., timeouts: _Optional[int] = ..., rejected_blocks: _Optional[int] = ..., lost_blocks: _Optional[int] = ..., requests: _Optional[int] = ..., request_seconds: _Optional[float] = ..., restore_bytes_per_second: _Optional[float] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ["block_tokens", "corrupt_blocks", "engine", "model_fingerprint", "ram", "shared", "ssd", "ssd_quarantined_segments", "write_errors", "write_errors_eio", "write_errors_enospc", "write_errors_other", "write_queue_depth", "write_skips"]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    RAM_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
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
    shared: SharedTierStats
    ssd: TierStats
    ssd_quarantined_segments: int
    write_errors: int
    write_errors_eio: int
    write_errors_enospc: int
    write_errors_other: int
    write_queue_depth: int
    write_skips: int
    def __init__(self, ram: _Optional[_Union[TierStats, _Mapping]] = ..., ssd: _Optional[_Union[TierStats, _Mapping]] = ..., block_tokens: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., write_queue_depth: _Optional[int] = ..., write_skips: _Optional[int] = ..., corrupt_blocks: _Optional[int] = ..., write_errors: _Optional[int] = ..., write_errors_enospc: _Optional[int] = ..., write_errors_eio: _Optional[int] = ..., write_errors_other: _Optional[int] = ..., ssd_quarantined_segments: _Optional[int] = ..., engine: _Optional[_Union[EngineStats, _Mapping]] = ..., shared: _Optional[_Union[SharedTierStats, _Mapping]] = ...) -> None: ...

class TierStats(_message.Message):
    __slots__ = ["blocks", "bytes", "bytes_max", "evictions", "hits", "misses", "pinned_blocks", "removed_blocks"]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_MAX_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    bytes_max: int
    evictions: int
    hits: int
    misses: int
    pinned_blocks: int
    removed_blocks: int
    def __init__(self, bytes: _Optional[int] = ..., bytes_max: _Optional[int] = ..., blocks: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., pinned_blocks: _Optional[int] = ..., removed_blocks: _Optional[int] = ...) -> None: ...

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
