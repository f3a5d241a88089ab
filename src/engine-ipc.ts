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
  CacheStats,
  GetBlockResult,
  KVBlockInput,
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
  kvHeads: number;
  headDim: number;
  weightBytes: number;
}

/** How the prompt's KV was obtained. */
export interface CacheReport {
  ramTokens: number;
  ssdTokens: number;
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
  /** "restore": cached blocks were restored; "recompute": the cost model chose recomputing SSD blocks; "none": nothing cached. */
  decision: "restore" | "recompute" | "none";
  estimatedRestoreMs: number;
  estimatedRecomputeMs: number;
  /** Blocks handed to the SSD write queue when the request finished. */
  blocksQueued: number;
  /** Each import of the restore (a run of RAM blocks or one SSD batch), with epoch-ms instants. */
  restoreBatches: {
    tier: "ram" | "ssd";
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
 * (`request`), what streams back before the answer (`item`, GetBlocks only) and the answer (`result`).
 * PutBlocks streams its blocks to the engine as `kv-put` messages.
 */
export interface KvOps {
  lookup: { request: { tokens: number[] }; result: LookupResult };
  getBlocks: { request: { keys: Buffer[] }; result: null };
  putBlocks: { request: object; result: cache.PutBlocksReport };
  pin: { request: { selection: BlockSelection; kind: PinHint }; result: cache.PinReport };
  unpin: { request: { selection: BlockSelection }; result: { unpinnedBlocks: number } };
  /** `all`: server-wide numbers (an admin's call); otherwise the calling tenant's own blocks only. */
  stats: { request: { all: boolean }; result: cache.CacheStats };
}

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
  | { type: "kv-put"; id: number; block?: cache.KVBlockInput };

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
}

export interface PrefillProgress {
  tokensReceived: number;
  tokensPrefilled: number;
  tokensReused: number;
  blocksPersisted: number;
}
