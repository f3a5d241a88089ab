import type { core as mx } from "@frost-beta/mlx";
import type { ModelConfig } from "../config";
import { type AttentionModule, Linear, Module, type CausalLM, DecoderLM, type LayerSegment } from "./base";
import { RotaryEmbedding, attendSegments, mergeHeads, splitHeads } from "./attention";

/**
 * Qwen2 and Qwen2.5 (after mlx-lm models/qwen2.py): Llama's block with biases on the q, k and v
 * projections (always, whatever the config says) and none on o.
 */
class Attention extends Module implements AttentionModule {
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
    const { hiddenSize, numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim } = config;
    this.q_proj = new Linear(hiddenSize, heads * headDim, true);
    this.k_proj = new Linear(hiddenSize, kvHeads * headDim, true);
    this.v_proj = new Linear(hiddenSize, kvHeads * headDim, true);
    this.o_proj = new Linear(heads * headDim, hiddenSize, false);
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

/** Builds a Qwen2 model with placeholder weights of the checkpoint's shapes. */
export function createModel(config: ModelConfig): CausalLM {
  return new DecoderLM(config, (c) => new Attention(c));
}
