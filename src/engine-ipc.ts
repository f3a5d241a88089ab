// The IPC protocol between the front end (src/frontend, src/rpc) and the engine process (src/engine):
// the one module both processes import. Messages cross an IPC channel with the structured-clone
// ("advanced") serialization, so plain objects, arrays and Buffers travel as they are. Every
// operation has its request and result types here; results of the prefix cache are the cache's own
// types, imported as types only (the front end never loads the cache's code).
import type * as cache from "./cache/index.js";
import type { ErrorCode } from "./errors.js";
import type { ToolCallFormat } from "./model/tool-syntax.js";

export type {
  BlockErrorCode,
  BlockListing,
  CacheStats,
  ClearReport,
  EvictReport,
  EvictTier,
  ExportReport,
  GetBlockResult,
  ImportReport,
  KVBlockInput,
  ListedBlock,
  PinReport,
  PutBlocksReport,
  Tier,
} from "./cache/index.js";

/** Sampling settings after validation and defaults. */
export interface SamplingSettings {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
  /** Structured output: only tokens that keep the output valid can be sampled. Unset: free text. */
  constraint?: ConstraintSpec;
}

/** A JSON value, as JSON.parse gives it. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A JSON Schema: an object, or true / false. */
export type JsonSchema = boolean | { [key: string]: Json };

/** A tool whose call a tool_call constraint can force. */
export interface ToolSpec {
  name: string;
  /** The JSON Schema of its arguments as JSON text ("" means no parameters). */
  parametersJson: string;
}

/**
 * What the generated text must be (structured outputs), enforced by constrained decoding in the
 * engine (src/engine/constraint.ts); built by the front end (src/constraint-spec.ts). The engine
 * compiles each distinct spec once and keeps it for the requests that repeat it.
 */
export type ConstraintSpec =
  /** Any JSON object. */
  | { kind: "json_object" }
  /**
   * JSON valid under `schema` (parsed JSON Schema). With `strict`, a schema using features the
   * decoder cannot enforce is refused instead of enforced in part.
   */
  | { kind: "json_schema"; schema: JsonSchema; strict: boolean }
  /**
   * One or more tool calls in the model family's written form (src/model/tool-syntax.ts), each call's
   * arguments valid under its tool's schema: "required" lets the model pick among `tools` (and make
   * several calls where the form allows), a name forces exactly one call of that tool.
   */
  | { kind: "tool_call"; format: ToolCallFormat; tools: ToolSpec[]; choice: "required" | { name: string } };

/** What the engine reports about the model it serves. */
export interface ModelInfo {
  name: string;
  dir: string;
  fingerprint: string;
  modelType: string;
  vocabSize: number;
  contextTokens: number;
  numLayers: number;
  /** Layers holding keys and values (numLayers less the recurrent ones). */
  attentionLayers: number;
  kvHeads: number;
  headDim: number;
  /** Bytes of one sequence's recurrent state over all recurrent layers (0 without them). */
  recurrentStateBytes: number;
  weightBytes: number;
  /** The engine process's malloc: "jemalloc <version>" or "system" (see src/engine/allocator.ts). */
  allocator: string;
}

/** How the prompt's KV was obtained. */
export interface CacheReport {
  ramTokens: number;
  ssdTokens: number;
  /** Leading prompt tokens restored from the shared tier (Redis). */
  sharedTokens: number;
  recomputedTokens: number;
  recomputeChosenTokens: number;
  corruptBlocks: number;
  /** Cached tokens past the point where the prompt left them (see PrefixMatch.divergedTokens). */
  divergedTokens: number;
}

export type FinishReason = "eos" | "stop_string" | "max_tokens" | "context_limit";

export interface Timings {
  ttftMs: number;
  lookupMs: number;
  restoreMs: number;
  prefillMs: number;
  decodeTokensPerSecond: number;
  totalMs: number;
  queueMs: number;
}

/** Wall-clock instants (epoch ms) of a request's phases, for tracing; 0 when a phase did not happen. */
export interface Phases {
  arrivedAt: number;
  startedAt: number;
  lookupEndAt: number;
  restoreEndAt: number;
  firstTokenAt: number;
  endAt: number;
}

/** What the cache did for a request, beyond the token counts of CacheReport. */
export interface CacheActivity {
  blocksRestored: number;
  ssdBytes: number;
  /**
   * "restore": cached blocks were restored; "resident": the engine's last sequence was taken over
   * (no copy; see Engine.take); "recompute": the cost model chose recomputing SSD blocks; "none":
   * nothing cached.
   */
  decision: "restore" | "resident" | "recompute" | "none";
  estimatedRestoreMs: number;
  estimatedRecomputeMs: number;
  /** Blocks handed to the SSD write queue when the request finished. */
  blocksQueued: number;
  /**
   * Where the restore's time went, in ms: importing RAM blocks, waiting for SSD reads not hidden
   * behind other work, verifying stored blocks, staging them into MLX, importing them (all 0
   * without a restore).
   */
  restoreStages: cache.RestoreStages;
  /** Each import of the restore (a run of RAM blocks or one SSD batch), with epoch-ms instants. */
  restoreBatches: {
    tier: "ram" | "ssd" | "shared";
    blocks: number;
    tokens: number;
    bytes: number;
    startAt: number;
    endAt: number;
  }[];
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

/** A pin the request asks for once its prompt is cached. */
export interface PinHint {
  kind: "soft" | "hard";
  ttlMs?: number;
}

/** Blocks chosen by key or by the cached prefix of a prompt. */
export type BlockSelection = { keys: Buffer[] } | { tokens: number[] };

/** A cached block of a Lookup answer. */
export interface LookupBlock {
  key: Buffer;
  tier: cache.Tier;
  /** Index of the block's first token in the prompt. */
  start: number;
  tokens: number;
}

/** How much of a prompt is cached, and where. */
export interface LookupResult {
  tokens: number;
  ramTokens: number;
  ssdTokens: number;
  blocks: LookupBlock[];
}

/**
 * Every KVBlocks operation the engine answers (it owns the cache): what the front end sends
 * (`request`) and the answer (`result`). What streams besides: GetBlocks' blocks come back as
 * `kv-item` messages before the answer; PutBlocks' blocks go to the engine as `kv-put` messages;
 * Export's bundle comes back as `kv-data` messages, each acknowledged with a `kv-ack` once the
 * client took it; Import's bundle goes to the engine as `kv-data` messages, each acknowledged with a
 * `kv-ack` once the engine read it. The acknowledgements keep at most KV_STREAM_WINDOW_BYTES in
 * flight, so a slow client or disk holds up the sender instead of filling a process's memory.
 */
export interface KvOps {
  lookup: { request: { tokens: number[] }; result: LookupResult };
  getBlocks: { request: { keys: Buffer[] }; result: null };
  putBlocks: { request: object; result: cache.PutBlocksReport };
  pin: { request: { selection: BlockSelection; kind: PinHint }; result: cache.PinReport };
  unpin: { request: { selection: BlockSelection }; result: { unpinnedBlocks: number } };
  /** `all`: server-wide numbers (an admin's call); otherwise the calling tenant's own blocks only. */
  stats: { request: { all: boolean }; result: cache.CacheStats };
  /**
   * One page of cached blocks, after the hex key `after` ("" first). With `names` (an admin listing
   * every tenant's blocks), every tenant's, each named when one of `names` (the tenants the server's
   * tokens name) has its root; without, the calling tenant's.
   */
  listBlocks: {
    request: { names?: string[]; pageSize: number; after: string };
    result: cache.BlockListing;
  };
  /** Takes the selected blocks out of a tier or both; pinned ones only with `force`. */
  evict: {
    request: { selection: BlockSelection; tier: cache.EvictTier; force: boolean };
    result: cache.EvictReport;
  };
  /** Removes every block of the calling tenant, or with `all` (an admin's call) every block. */
  clear: { request: { all: boolean }; result: cache.ClearReport };
  /** A bundle of the tenant's blocks (or the selected ones, with their chains) as `kv-data`. */
  exportBundle: { request: { selection?: BlockSelection }; result: cache.ExportReport };
  /** Stores the bundle that arrives as `kv-data` messages (the last one without data). */
  importBundle: { request: object; result: cache.ImportReport };
}

/** Bytes a streaming KV call (Export, Import) may have sent and not had acknowledged. */
export const KV_STREAM_WINDOW_BYTES = 64 * 1024 * 1024;

/** The name of a KVBlocks operation. */
export type KvOpName = keyof KvOps;

/** A KVBlocks operation as sent: its name and its request fields. */
export type KvOp = { [N in KvOpName]: { op: N } & KvOps[N]["request"] }[KvOpName];

/** A KVBlocks answer, tagged with the operation it answers. */
export type KvResult = { [N in KvOpName]: { op: N; value: KvOps[N]["result"] } }[KvOpName];

export type ToEngine =
  | {
      type: "generate";
      id: number;
      tokens: number[];
      sampling: SamplingSettings;
      persist: boolean;
      pin?: PinHint;
      tenant: string;
      arrivedAt: number;
      /**
       * Keep the model's tool-call and reasoning markers in the text, special tokens or not: the
       * front end parses them out of it.
       */
      keepOutputMarkers: boolean;
    }
  | { type: "cancel"; id: number }
  /** Opens a prefill session: context arrives in pieces, each prefilled into the cache. */
  | { type: "prefill-open"; id: number; tenant: string; tokens: number[]; persist: boolean }
  | { type: "prefill-append"; id: number; tokens: number[] }
  | { type: "prefill-close"; id: number }
  | ({ type: "kv"; id: number; tenant: string } & KvOp)
  /** One block of a PutBlocks stream; `block` undefined ends the stream. */
  | { type: "kv-put"; id: number; block?: cache.KVBlockInput }
  /** Bytes of an Import's bundle; `data` undefined ends the stream. */
  | { type: "kv-data"; id: number; data?: Uint8Array }
  /** The front end passed `bytes` of an Export's bundle on to the client. */
  | { type: "kv-ack"; id: number; bytes: number };

export type FromEngine =
  | { type: "loading"; loadedBytes: number; totalBytes: number; what: string }
  | { type: "ready"; info: ModelInfo }
  | { type: "fatal"; code: ErrorCode; message: string }
  /** Something the engine's cache wants an operator to read (a damaged file set aside, write errors). */
  | { type: "log"; message: string }
  | { type: "engine-stats"; stats: EngineStats }
  | { type: "started"; id: number; promptTokens: number; cache: CacheReport }
  /** A long prefill's progress, between `started` and the first token (see GenerateResponse.progress). */
  | { type: "progress"; id: number; promptTokensDone: number; promptTokensTotal: number }
  | { type: "delta"; id: number; tokenIds: number[]; text: string }
  | {
      type: "finished";
      id: number;
      reason: FinishReason;
      usage: Usage;
      timings: Timings;
      phases: Phases;
      activity: CacheActivity;
    }
  | { type: "failed"; id: number; code: ErrorCode; message: string }
  | { type: "prefill-progress"; id: number; progress: PrefillProgress; done: boolean }
  /** One block (or the reason it is not served) of a GetBlocks answer. */
  | { type: "kv-item"; id: number; item: cache.GetBlockResult }
  /** Bytes of an Export's bundle. */
  | { type: "kv-data"; id: number; data: Uint8Array }
  /** The engine read `bytes` of an Import's bundle. */
  | { type: "kv-ack"; id: number; bytes: number }
  /** The answer of a KV operation; ends the stream for GetBlocks. */
  | { type: "kv-result"; id: number; result: KvResult };

/** The engine process's memory and scheduler, reported about once a second. */
export interface EngineStats {
  rssBytes: number;
  memoryMaxBytes: number;
  memoryReservedBytes: number;
  sequencesRunning: number;
  sequencesWaiting: number;
  decodeBatch: number;
  steps: number;
  /** V8 heap in use (MLX's native memory is in rssBytes only). */
  heapUsedBytes?: number;
  /** With jemalloc: bytes in pages holding live allocations, freed pages kept for reuse, and the
   * times kept pages went back to the kernel (idle, or over --engine-kept-bytes-max past the peak). */
  allocatorActiveBytes?: number;
  allocatorKeptBytes?: number;
  allocatorPurges?: number;
  /** Event-loop delay since the previous report (a long synchronous MLX step shows here). */
  eventLoopDelayMeanMs?: number;
  eventLoopDelayP99Ms?: number;
  eventLoopDelayMaxMs?: number;
}

export interface PrefillProgress {
  tokensReceived: number;
  tokensPrefilled: number;
  tokensReused: number;
  blocksPersisted: number;
}
