import type { ModelConfig } from "../config";
import { type CausalLM, DecoderLM } from "./base";
import { Attention } from "./llama";

/**
 * Mistral: Llama's block without attention biases, plus an optional sliding window
 * (`sliding_window` in config.json, e.g. 4096 for Mistral-7B-v0.1, null from v0.2 on). The window
 * is applied exactly, through the attention mask (see `attentionMask` in attention.ts); the KV cache
 * keeps every position rather than rotating, so memory grows with the full context and a prefix
 * cache can restore any range.
 */
export function createModel(config: ModelConfig): CausalLM {
  return new DecoderLM({ ...config, attentionBias: false }, (c) => new Attention(c));
}
