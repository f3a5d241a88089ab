import type { core as mx } from "@frost-beta/mlx";
import type { ModelConfig } from "../config";
import {
  type AttentionModule,
  Linear,
  Module,
  RMSNorm,
  type CausalLM,
  DecoderLM,
  type LayerSegment,
} from "./base";
import { RotaryEmbedding, attendSegments, mergeHeads, splitHeads } from "./attention";

/**
 * Qwen3 (after mlx-lm models/qwen3.py): Llama's block with an RMSNorm over each head of the
 * queries and keys (`q_norm`, `k_norm`, weights [head_dim]) applied before rope, and head_dim
 * set explicitly rather than hidden_size / heads. `attention_bias` (false in released models)
 * puts a bias on all four projections.
 */
class Attention extends Module implements AttentionModule {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm: RMSNorm;
  k_norm: RMSNorm;
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
    this.q_norm = new RMSNorm(headDim, config.rmsNormEps);
    this.k_norm = new RMSNorm(headDim, config.rmsNormEps);
    this.#heads = heads;
    this.#kvHeads = kvHeads;
    this.#scale = 1 / Math.sqrt(headDim);
    this.#rope = new RotaryEmbedding(config);
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const queries = this.q_norm.forward(splitHeads(this.q_proj.forward(x), this.#heads));
    const keys = this.k_norm.forward(splitHeads(this.k_proj.forward(x), this.#kvHeads));
    const values = splitHeads(this.v_proj.forward(x), this.#kvHeads);
    const out = attendSegments(queries, keys, values, this.#rope, segments, this.#scale);
    return this.o_proj.forward(mergeHeads(out));
  }
}

/** Builds a Qwen3 model with placeholder weights of the checkpoint's shapes. */
export function createModel(config: ModelConfig): CausalLM {
  return new DecoderLM(config, (c) => new Attention(c));
}
