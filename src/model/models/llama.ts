import type { core as mx } from "@frost-beta/mlx";
import type { ModelConfig } from "../config";
import { type AttentionModule, Linear, Module, type CausalLM, DecoderLM, type LayerSegment } from "./base";
import { RotaryEmbedding, attendSegments, mergeHeads, splitHeads } from "./attention";

/**
 * Llama 2 and Llama 3.x (after mlx-lm models/llama.py): grouped-query attention with rotary
 * embeddings (plain, linear or llama3-scaled), RMSNorm, SwiGLU. `attention_bias` puts a bias on
 * all four projections, as in Hugging Face's LlamaAttention.
 */
export class Attention extends Module implements AttentionModule {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  readonly #heads: number;
  readonly #kvHeads: number;
  readonly #scale: number;
  readonly #rope: RotaryEmbedding;

  constructor(config: ModelConfig) {
    super();
    const {
      hiddenSize,
      numAttentionHeads: heads,
      numKeyValueHeads: kvHeads,
      headDim,
      attentionBias,
    } = config;
    this.q_proj = new Linear(hiddenSize, heads * headDim, attentionBias);
    this.k_proj = new Linear(hiddenSize, kvHeads * headDim, attentionBias);
    this.v_proj = new Linear(hiddenSize, kvHeads * headDim, attentionBias);
    this.o_proj = new Linear(heads * headDim, hiddenSize, attentionBias);
    this.#heads = heads;
    this.#kvHeads = kvHeads;
    this.#scale = 1 / Math.sqrt(headDim);
    this.#rope = new RotaryEmbedding(config);
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const queries = splitHeads(this.q_proj.forward(x), this.#heads);
    const keys = splitHeads(this.k_proj.forward(x), this.#kvHeads);
    const values = splitHeads(this.v_proj.forward(x), this.#kvHeads);
    const out = attendSegments(queries, keys, values, this.#rope, segments, this.#scale);
    return this.o_proj.forward(mergeHeads(out));
  }
}

/** Builds a Llama model with placeholder weights of the checkpoint's shapes. */
export function createModel(config: ModelConfig): CausalLM {
  return new DecoderLM(config, (c) => new Attention(c));
}
