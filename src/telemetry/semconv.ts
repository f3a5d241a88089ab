// Every span, event, attribute and metric name kvpark emits, in one place, so that dashboards, tests and
// code agree. The gen_ai.* and rpc.* names are copied from the OpenTelemetry semantic conventions
// (@opentelemetry/semantic-conventions 1.45, incubating entries) rather than imported: the incubating
// entry point is not covered by the package's stability promise, and copying pins what the dashboards
// in deploy/grafana query. Everything else is kvpark's own, under kvpark.*.

// ---- GenAI semantic conventions ---------------------------------------------------------------

export const ATTR_GEN_AI_OPERATION_NAME = "gen_ai.operation.name";
export const ATTR_GEN_AI_PROVIDER_NAME = "gen_ai.provider.name";
export const ATTR_GEN_AI_REQUEST_MODEL = "gen_ai.request.model";
export const ATTR_GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens";
export const ATTR_GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature";
export const ATTR_GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p";
export const ATTR_GEN_AI_REQUEST_TOP_K = "gen_ai.request.top_k";
export const ATTR_GEN_AI_REQUEST_SEED = "gen_ai.request.seed";
export const ATTR_GEN_AI_REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences";
export const ATTR_GEN_AI_REQUEST_STREAM = "gen_ai.request.stream";
export const ATTR_GEN_AI_RESPONSE_MODEL = "gen_ai.response.model";
export const ATTR_GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons";
export const ATTR_GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens";
export const ATTR_GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens";
export const ATTR_GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens";
export const ATTR_GEN_AI_TOKEN_TYPE = "gen_ai.token.type";
/** Opt-in content attributes (JSON), set only with --telemetry-record-content. */
export const ATTR_GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages";
export const ATTR_GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages";

export const GEN_AI_OPERATION_CHAT = "chat";
export const GEN_AI_OPERATION_TEXT_COMPLETION = "text_completion";
/** kvpark serves its own models, so it names itself as the provider. */
export const GEN_AI_PROVIDER_KVPARK = "kvpark";
export const GEN_AI_TOKEN_TYPE_INPUT = "input";
export const GEN_AI_TOKEN_TYPE_OUTPUT = "output";

export const METRIC_GEN_AI_SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token";
export const METRIC_GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token";
export const METRIC_GEN_AI_SERVER_REQUEST_DURATION = "gen_ai.server.request.duration";

// ---- RPC and general conventions --------------------------------------------------------------

export const ATTR_RPC_SYSTEM = "rpc.system";
export const ATTR_RPC_SERVICE = "rpc.service";
export const ATTR_RPC_METHOD = "rpc.method";
export const ATTR_RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code";
export const ATTR_ERROR_TYPE = "error.type";
export const RPC_SYSTEM_GRPC = "grpc";
/** The HTTP APIs' server spans (stable HTTP conventions). */
export const ATTR_HTTP_REQUEST_METHOD = "http.request.method";
export const ATTR_HTTP_ROUTE = "http.route";
export const ATTR_HTTP_RESPONSE_STATUS_CODE = "http.response.status_code";
export const METRIC_RPC_SERVER_CALL_DURATION = "rpc.server.call.duration";
/** Resource attributes; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override kvpark's defaults. */
export const ATTR_SERVICE_NAME = "service.name";
export const ATTR_SERVICE_VERSION = "service.version";

// ---- kvpark: per request ----------------------------------------------------------------------

/** Tenant of an authenticated call (absent without --auth-tokens). */
export const ATTR_KVPARK_TENANT = "kvpark.tenant";
/** The engine's own finish reason (eos, stop_string, max_tokens, context_limit). */
export const ATTR_KVPARK_FINISH_REASON = "kvpark.finish_reason";
/** How the prompt was given: text, chat, tokens, or a PrefillStream handle. */
export const ATTR_KVPARK_PROMPT_KIND = "kvpark.prompt.kind";
export const ATTR_KVPARK_CACHE_RAM_TOKENS = "kvpark.cache.ram_tokens";
export const ATTR_KVPARK_CACHE_SSD_TOKENS = "kvpark.cache.ssd_tokens";
/** Prompt tokens restored from the shared tier (Redis). */
export const ATTR_KVPARK_CACHE_SHARED_TOKENS = "kvpark.cache.shared_tokens";
export const ATTR_KVPARK_CACHE_RECOMPUTED_TOKENS = "kvpark.cache.recomputed_tokens";
export const ATTR_KVPARK_CACHE_RECOMPUTE_CHOSEN_TOKENS = "kvpark.cache.recompute_chosen_tokens";
export const ATTR_KVPARK_CACHE_CORRUPT_BLOCKS = "kvpark.cache.corrupt_blocks";
/** Cached tokens lost where the prompt left the cached sequence (e.g. a re-rendered chat history). */
export const ATTR_KVPARK_CACHE_DIVERGED_TOKENS = "kvpark.cache.diverged_tokens";
/** restore | recompute | none: what the cost model did with the cached prefix. */
export const ATTR_KVPARK_CACHE_DECISION = "kvpark.cache.decision";
export const ATTR_KVPARK_CACHE_BLOCKS_QUEUED = "kvpark.cache.blocks_queued";
export const ATTR_KVPARK_RESTORE_BLOCKS = "kvpark.restore.blocks";
export const ATTR_KVPARK_RESTORE_SSD_BYTES = "kvpark.restore.ssd_bytes";
export const ATTR_KVPARK_RESTORE_MS = "kvpark.restore.ms";
export const ATTR_KVPARK_RESTORE_ESTIMATED_MS = "kvpark.restore.estimated_ms";
export const ATTR_KVPARK_RECOMPUTE_ESTIMATED_MS = "kvpark.recompute.estimated_ms";
/** Which tiers a restore read: ram, ssd, or mixed. */
export const ATTR_KVPARK_RESTORE_TIER = "kvpark.restore.tier";
export const ATTR_KVPARK_RESTORE_BATCH_BYTES = "kvpark.restore.batch.bytes";
export const ATTR_KVPARK_RESTORE_BATCH_TOKENS = "kvpark.restore.batch.tokens";
export const ATTR_KVPARK_RESTORE_BATCH_MS = "kvpark.restore.batch.ms";
/** A restore's stages, in ms: RAM blocks imported, SSD and shared-tier reads waited for, blocks verified, staged into MLX, imported. */
export const ATTR_KVPARK_RESTORE_RAM_MS = "kvpark.restore.ram_ms";
export const ATTR_KVPARK_RESTORE_SSD_READ_WAIT_MS = "kvpark.restore.ssd_read_wait_ms";
export const ATTR_KVPARK_RESTORE_SHARED_READ_WAIT_MS = "kvpark.restore.shared_read_wait_ms";
export const ATTR_KVPARK_RESTORE_VERIFY_MS = "kvpark.restore.verify_ms";
export const ATTR_KVPARK_RESTORE_STAGE_MS = "kvpark.restore.stage_ms";
export const ATTR_KVPARK_RESTORE_IMPORT_MS = "kvpark.restore.import_ms";
export const ATTR_KVPARK_LOOKUP_MS = "kvpark.lookup.ms";
export const ATTR_KVPARK_PREFILL_MS = "kvpark.prefill.ms";
export const ATTR_KVPARK_PREFILL_TOKENS = "kvpark.prefill.tokens";
/** Progress of a PrefillStream call: prompt tokens received, reused from the cache, blocks persisted. */
export const ATTR_KVPARK_PREFILL_TOKENS_RECEIVED = "kvpark.prefill.tokens_received";
export const ATTR_KVPARK_PREFILL_TOKENS_REUSED = "kvpark.prefill.tokens_reused";
export const ATTR_KVPARK_PREFILL_BLOCKS_PERSISTED = "kvpark.prefill.blocks_persisted";
export const ATTR_KVPARK_TTFT_MS = "kvpark.ttft.ms";
export const ATTR_KVPARK_QUEUE_MS = "kvpark.queue.ms";
export const ATTR_KVPARK_TOTAL_MS = "kvpark.total.ms";
export const ATTR_KVPARK_DECODE_TOKENS_PER_SECOND = "kvpark.decode.tokens_per_second";

// ---- kvpark: KVBlocks RPCs --------------------------------------------------------------------

/** Number of block keys a call named. */
export const ATTR_KVPARK_BLOCKS_REQUESTED = "kvpark.blocks.requested";
/** The first KEYS_RECORDED_MAX requested keys, hex. */
export const ATTR_KVPARK_BLOCKS_KEYS = "kvpark.blocks.keys";
export const ATTR_KVPARK_BLOCKS_FOUND = "kvpark.blocks.found";
/** Blocks of a GetBlocks call served from the RAM tier and from the SSD tier. */
export const ATTR_KVPARK_BLOCKS_RAM = "kvpark.blocks.ram";
export const ATTR_KVPARK_BLOCKS_SSD = "kvpark.blocks.ssd";
export const ATTR_KVPARK_BLOCKS_MISSING = "kvpark.blocks.missing";
/** Blocks whose stored checksum or envelope failed verification. */
export const ATTR_KVPARK_BLOCKS_CORRUPT = "kvpark.blocks.corrupt";
/** ok when every served block verified, failed when at least one did not. */
export const ATTR_KVPARK_BLOCKS_CHECKSUM = "kvpark.blocks.checksum";
export const ATTR_KVPARK_BLOCKS_BYTES = "kvpark.blocks.bytes";
export const ATTR_KVPARK_BLOCKS_ACCEPTED = "kvpark.blocks.accepted";
export const ATTR_KVPARK_BLOCKS_REJECTED = "kvpark.blocks.rejected";
/** Distinct rejection codes of a PutBlocks call, sorted. */
export const ATTR_KVPARK_BLOCKS_REJECTION_CODES = "kvpark.blocks.rejection_codes";
export const ATTR_KVPARK_BLOCKS_PINNED = "kvpark.blocks.pinned";
export const ATTR_KVPARK_BLOCKS_UNPINNED = "kvpark.blocks.unpinned";
export const ATTR_KVPARK_PIN_KIND = "kvpark.pin.kind";
export const ATTR_KVPARK_PIN_HARD_BYTES = "kvpark.pin.hard_bytes";
/** hit when a Lookup found at least one cached token, miss otherwise. */
export const ATTR_KVPARK_LOOKUP_RESULT = "kvpark.lookup.result";
export const ATTR_KVPARK_LOOKUP_PROMPT_TOKENS = "kvpark.lookup.prompt_tokens";
export const ATTR_KVPARK_LOOKUP_CACHED_TOKENS = "kvpark.lookup.cached_tokens";
/** Fastest tier of the matched blocks of a Lookup: ram, ssd, mixed, or none. */
export const ATTR_KVPARK_LOOKUP_TIER = "kvpark.lookup.tier";

/** Block keys recorded per span at most; the count attribute says how many there were. */
export const KEYS_RECORDED_MAX = 16;

// ---- kvpark: metric attributes ----------------------------------------------------------------

/** Where prompt tokens' KV came from: ram, ssd, or computed. */
export const ATTR_KVPARK_CACHE_SOURCE = "kvpark.cache.source";
/** A cache tier: ram or ssd. */
export const ATTR_KVPARK_CACHE_TIER = "kvpark.cache.tier";
/** State of the engine's sequences: running (admitted) or waiting (for memory). */
export const ATTR_KVPARK_ENGINE_SEQUENCE_STATE = "kvpark.engine.sequence.state";
export const ENGINE_SEQUENCE_STATE_RUNNING = "running";
export const ENGINE_SEQUENCE_STATE_WAITING = "waiting";

// ---- Span and event names ---------------------------------------------------------------------

export const SPAN_LOOKUP = "kvpark.lookup";
export const SPAN_RESTORE = "kvpark.restore";
/** One import of a restore: a run of RAM blocks or one batch read from SSD. */
export const SPAN_RESTORE_BATCH = "kvpark.restore.batch";
export const SPAN_PREFILL = "kvpark.prefill";
export const SPAN_DECODE = "kvpark.decode";
/** Event on the generation span at the instant the first token was sampled. */
export const EVENT_FIRST_TOKEN = "gen_ai.first_token";

// ---- kvpark metrics ---------------------------------------------------------------------------

export const METRIC_KVPARK_TOKEN_USAGE = "kvpark.token.usage";
export const METRIC_KVPARK_CACHE_PROMPT_TOKENS = "kvpark.cache.prompt_tokens";
export const METRIC_KVPARK_CACHE_HIT_RATIO = "kvpark.cache.hit_ratio";
export const METRIC_KVPARK_CACHE_DECISIONS = "kvpark.cache.decisions";
export const METRIC_KVPARK_CACHE_RESTORE_DURATION = "kvpark.cache.restore.duration";
export const METRIC_KVPARK_CACHE_RESTORE_SSD_SIZE = "kvpark.cache.restore.ssd_size";
export const METRIC_KVPARK_CACHE_RESTORE_THROUGHPUT = "kvpark.cache.restore.throughput";
export const METRIC_KVPARK_CACHE_SIZE = "kvpark.cache.size";
export const METRIC_KVPARK_CACHE_SIZE_LIMIT = "kvpark.cache.size_limit";
export const METRIC_KVPARK_CACHE_BLOCKS = "kvpark.cache.blocks";
export const METRIC_KVPARK_CACHE_PINNED_BLOCKS = "kvpark.cache.pinned_blocks";
export const METRIC_KVPARK_CACHE_BLOCK_HITS = "kvpark.cache.block.hits";
export const METRIC_KVPARK_CACHE_BLOCK_MISSES = "kvpark.cache.block.misses";
export const METRIC_KVPARK_CACHE_EVICTIONS = "kvpark.cache.evictions";
export const METRIC_KVPARK_CACHE_CORRUPT_BLOCKS = "kvpark.cache.corrupt_blocks";
export const METRIC_KVPARK_CACHE_WRITE_ERRORS = "kvpark.cache.write.errors";
export const METRIC_KVPARK_CACHE_WRITE_SKIPS = "kvpark.cache.write.skips";
export const METRIC_KVPARK_CACHE_WRITE_QUEUE_DEPTH = "kvpark.cache.write_queue.depth";
export const METRIC_KVPARK_CACHE_WRITE_QUEUE_SIZE = "kvpark.cache.write_queue.size";
/** The shared tier on Redis (--shared-tier): observed only on nodes that have one. */
export const METRIC_KVPARK_CACHE_SHARED_CONNECTED = "kvpark.cache.shared.connected";
export const METRIC_KVPARK_CACHE_SHARED_HITS = "kvpark.cache.shared.hits";
export const METRIC_KVPARK_CACHE_SHARED_MISSES = "kvpark.cache.shared.misses";
/** Bytes read from and written to the tier, by kvpark.cache.shared.direction (read, write). */
export const METRIC_KVPARK_CACHE_SHARED_IO = "kvpark.cache.shared.io";
/** Failures by error.type: read, write, timeout, rejected (failed verification), lost (gone since lookup). */
export const METRIC_KVPARK_CACHE_SHARED_ERRORS = "kvpark.cache.shared.errors";
export const METRIC_KVPARK_CACHE_SHARED_WRITE_SKIPS = "kvpark.cache.shared.write.skips";
export const METRIC_KVPARK_CACHE_SHARED_WRITE_QUEUE_DEPTH = "kvpark.cache.shared.write_queue.depth";
/** Round trips to Redis, and their total time: the ratio of their rates is the mean latency. */
export const METRIC_KVPARK_CACHE_SHARED_REQUESTS = "kvpark.cache.shared.requests";
export const METRIC_KVPARK_CACHE_SHARED_REQUEST_TIME = "kvpark.cache.shared.request.time";
export const ATTR_KVPARK_CACHE_SHARED_DIRECTION = "kvpark.cache.shared.direction";
/** The engine process, from its last report (EngineStats): memory against its bound, and its scheduler. */
export const METRIC_KVPARK_ENGINE_MEMORY_RSS = "kvpark.engine.memory.rss";
export const METRIC_KVPARK_ENGINE_MEMORY_LIMIT = "kvpark.engine.memory.limit";
export const METRIC_KVPARK_ENGINE_MEMORY_RESERVED = "kvpark.engine.memory.reserved";
export const METRIC_KVPARK_ENGINE_SEQUENCES = "kvpark.engine.sequences";
export const METRIC_KVPARK_ENGINE_DECODE_BATCH_SIZE = "kvpark.engine.decode.batch_size";
/** With jemalloc: the engine's freed pages kept for reuse, and the times they went back to the kernel. */
export const METRIC_KVPARK_ENGINE_MEMORY_KEPT = "kvpark.engine.memory.kept";
export const METRIC_KVPARK_ENGINE_MEMORY_PURGES = "kvpark.engine.memory.purges";
/** The engine's V8 heap in use, and its event loop's delay (mean and p99 over the last report's window). */
export const METRIC_KVPARK_ENGINE_HEAP_USED = "kvpark.engine.heap.used";
export const METRIC_KVPARK_ENGINE_EVENTLOOP_DELAY = "kvpark.engine.eventloop.delay";
/** kvpark.engine.eventloop.delay's statistic: mean, p99 or max. */
export const ATTR_KVPARK_ENGINE_EVENTLOOP_STAT = "kvpark.engine.eventloop.stat";

// ---- The front end's process and runtime (host-metrics and instrumentation-runtime-node) ----------

/**
 * Names the front end's process and runtime instrumentations emit (OpenTelemetry semantic
 * conventions), listed so that dashboards and tests query what is exported.
 */
export const METRIC_PROCESS_CPU_TIME = "process.cpu.time";
export const METRIC_PROCESS_CPU_UTILIZATION = "process.cpu.utilization";
export const METRIC_PROCESS_MEMORY_USAGE = "process.memory.usage";
export const METRIC_V8JS_MEMORY_HEAP_USED = "v8js.memory.heap.used";
export const METRIC_NODEJS_EVENTLOOP_DELAY_P99 = "nodejs.eventloop.delay.p99";
export const METRIC_NODEJS_EVENTLOOP_UTILIZATION = "nodejs.eventloop.utilization";

// ---- Histogram buckets ------------------------------------------------------------------------

/** Bucket boundaries the GenAI conventions recommend, and kvpark's own sized to what it measures. */
export const BUCKETS = {
  // The conventions' boundaries stop at 10 s; a cold prompt of 8k tokens takes minutes on a CPU, so the
  // upper buckets continue to 10 minutes (past the last one, a histogram only says "more").
  timeToFirstToken: [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 30, 60, 120,
    180, 300, 600,
  ],
  timePerOutputToken: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5],
  requestDuration: [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 120, 180, 300,
    600,
  ],
  tokens: [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304],
  // A RAM restore takes well under a millisecond per block; a cold SSD restore of a long context, seconds.
  restoreDuration: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  // From one small block (tens of KiB) to a long context of a 0.5B model (hundreds of MiB).
  restoreBytes: [65536, 262144, 1048576, 4194304, 16777216, 67108864, 268435456, 1073741824],
  restoreThroughput: [1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9],
  rpcDuration: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
} as const;
