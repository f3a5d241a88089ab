// Messages between the front end and the engine process. They cross an IPC channel with the
// structured-clone ("advanced") serialization, so plain objects, arrays and Buffers travel as they are.

/** Sampling settings after validation and defaults. */
export interface SamplingSettings {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
}

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

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

export type ToEngine =
  | {
      type: "generate";
      id: number;
      tokens: number[];
      sampling: SamplingSettings;
      persist: boolean;
      tenant: string;
      arrivedAt: number;
    }
  | { type: "cancel"; id: number };

export type FromEngine =
  | { type: "loading"; loadedBytes: number; totalBytes: number; what: string }
  | { type: "ready"; info: ModelInfo }
  | { type: "fatal"; code: string; message: string }
  | { type: "started"; id: number; promptTokens: number; cache: CacheReport }
  | { type: "delta"; id: number; tokenIds: number[]; text: string }
  | { type: "finished"; id: number; reason: FinishReason; usage: Usage; timings: Timings }
  | { type: "failed"; id: number; code: string; message: string };
