import { core as mx } from "@frost-beta/mlx";
import type { LinearAttentionConfig, ModelConfig } from "../config";
import type { RecurrentState } from "../recurrent-state";
import type { RowProduct } from "../batch-rows";
import {
  type CausalLM,
  Embedding,
  type LayerSegment,
  Linear,
  type LogitsFor,
  MLP,
  Module,
  RMSNorm,
  type Segment,
  collectRowProducts,
  rowsForLogits,
  segmentMask,
} from "./base";
import { RotaryEmbedding, attendSegments, mergeHeads, splitHeads } from "./attention";
import { gatedDeltaRule, logDecayOf } from "./gated-delta";

/**
 * Qwen3.5 dense text models (after mlx-lm models/qwen3_5.py, qwen3_next.py and gated_delta.py, and
 * Hugging Face's Qwen3_5 text model). Most layers are Gated DeltaNet, a linear-attention layer
 * with a fixed-size recurrent state; every `full_attention_interval`-th layer (or as `layer_types`
 * says) is softmax attention with an output gate. Both are followed by a SwiGLU MLP in a pre-norm
 * residual block as in Llama.
 *
 * Weights are expected in mlx-lm's layout (what its `sanitize` produces and mlx-community
 * checkpoints hold, minus their `language_model.` prefix): conv1d.weight [channels, kernel, 1] and
 * plain RMSNorm weights. A Hugging Face checkpoint stores conv1d as [channels, 1, kernel] and its
 * norms as (1 + weight); the loader refuses it on the conv1d shape rather than run it wrongly.
 *
 * The recurrence (gated-delta.ts) runs in MLX ops in two forms: a prefill segment of
 * DELTA_CHUNKED_MIN_TOKENS or more runs the chunked (WY) form, chunks of DELTA_CHUNK_TOKENS on
 * absolute positions whose ends fall on every block boundary, so the state after each boundary
 * inside the segment is exact and kept for the prefix cache (RecurrentState.snapshotTokens);
 * decode and shorter segments run one compiled step per token (mlx-lm's `gated_delta_ops`).
 */

/** Gated DeltaNet's recurrent layer; field names are the checkpoint's (`linear_attn.*`). */
class GatedDeltaNet extends Module {
  in_proj_qkv: Linear;
  in_proj_z: Linear;
  in_proj_b: Linear;
  in_proj_a: Linear;
  /** Depthwise causal convolution, [channels, kernel, 1] as mlx-lm stores it; no bias. */
  conv1d: Conv1dWeight;
  dt_bias: mx.array;
  A_log: mx.array;
  norm: RMSNorm;
  out_proj: Linear;
  readonly #shape: LinearAttentionConfig;
  readonly #keyDim: number;
  readonly #convChannels: number;

  constructor(config: ModelConfig, shape: LinearAttentionConfig) {
    super();
    const { numKeyHeads, numValueHeads, keyHeadDim, valueHeadDim, convKernel } = shape;
    const hidden = config.hiddenSize;
    this.#shape = shape;
    this.#keyDim = numKeyHeads * keyHeadDim;
    const valueDim = numValueHeads * valueHeadDim;
    this.#convChannels = 2 * this.#keyDim + valueDim;
    this.in_proj_qkv = new Linear(hidden, this.#convChannels, false);
    this.in_proj_z = new Linear(hidden, valueDim, false);
    this.in_proj_b = new Linear(hidden, numValueHeads, false);
    this.in_proj_a = new Linear(hidden, numValueHeads, false);
    this.conv1d = new Conv1dWeight(this.#convChannels, convKernel);
    this.dt_bias = mx.zeros([numValueHeads], mx.float32);
    this.A_log = mx.zeros([numValueHeads], mx.float32);
    this.norm = new RMSNorm(valueHeadDim, config.rmsNormEps);
    this.out_proj = new Linear(valueDim, hidden, false);
  }

  /** x [1, R, hidden] over every segment's rows; each segment runs over its own state. */
  forward(x: mx.array, segments: { rows: number; state: RecurrentState }[]): mx.array {
    const { numValueHeads, valueHeadDim } = this.#shape;
    const qkv = this.in_proj_qkv.forward(x);
    const z = this.in_proj_z.forward(x);
    const b = this.in_proj_b.forward(x);
    const a = this.in_proj_a.forward(x);
    const outs: mx.array[] = [];
    let start = 0;
    for (const s of segments) {
      const part = (t: mx.array) =>
        segments.length === 1 ? t : t.index(mx.Slice(), mx.Slice(start, start + s.rows), mx.Slice());
      outs.push(this.recur(part(qkv), part(b), part(a), s.state));
      start += s.rows;
    }
    const y = outs.length === 1 ? outs[0] : mx.concatenate(outs, 1);
    // Gated RMSNorm per value head: norm(y) * silu(z).
    const rows = x.shape[1];
    const gate = z.reshape(1, rows, numValueHeads, valueHeadDim);
    const out = mx.multiply(this.norm.forward(y), mx.multiply(gate, mx.sigmoid(gate)));
    return this.out_proj.forward(out.reshape(1, rows, -1));
  }

  /**
   * One segment: convolution over its rows after the carried inputs, then the delta rule from its
   * carried state. Returns y [1, T, valueHeads, valueHeadDim] and updates `state`.
   */
  private recur(qkv: mx.array, b: mx.array, a: mx.array, state: RecurrentState): mx.array {
    const { numKeyHeads, numValueHeads, keyHeadDim, valueHeadDim, convKernel } = this.#shape;
    const tokens = qkv.shape[1];
    const carried = convKernel - 1;
    const previous = state.conv ?? mx.zeros([1, carried, this.#convChannels], mx.float32);
    const convInput = mx.concatenate([previous, qkv], 1);
    // `take` copies, so the carried rows do not pin this chunk's input.
    state.conv = mx.take(convInput, mx.arange(tokens, tokens + carried, 1, mx.int32), 1);
    // out[t] = sum_j w[:, j] * input[t + j]: tap j = kernel - 1 weighs the current token.
    let conv: mx.array | null = null;
    for (let j = 0; j < convKernel; j++) {
      const tap = mx.multiply(
        convInput.index(mx.Slice(), mx.Slice(j, j + tokens), mx.Slice()),
        this.conv1d.weight.index(mx.Slice(), j, 0),
      );
      conv = conv ? mx.add(conv, tap) : tap;
    }
    const activated = mx.multiply(conv!, mx.sigmoid(conv!));

    const kd = this.#keyDim;
    const split = (from: number, to: number, heads: number) =>
      activated.index(mx.Slice(), mx.Slice(), mx.Slice(from, to)).reshape(1, tokens, heads, -1);
    // q and k: unit length (Hugging Face's l2norm, eps 1e-6), q also scaled by 1/sqrt(keyHeadDim).
    const scale = 1 / Math.sqrt(keyHeadDim);
    let q = mx.multiply(l2Normalize(split(0, kd, numKeyHeads)), scale);
    let k = l2Normalize(split(kd, 2 * kd, numKeyHeads));
    const v = split(2 * kd, this.#convChannels, numValueHeads);
    const groups = numValueHeads / numKeyHeads;
    if (groups > 1) {
      // Value head h reads key head floor(h / groups), as repeat_interleave does.
      q = mx.repeat(q, groups, 2);
      k = mx.repeat(k, groups, 2);
    }
    const beta = mx.sigmoid(b);
    const logDecay = logDecayOf(this.A_log, a, this.dt_bias);

    const S0 = state.delta ?? mx.zeros([1, numValueHeads, valueHeadDim, keyHeadDim], mx.float32);
    // At a block boundary inside the segment, keep the state after that token: a block ending
    // there carries it (the state after the segment's last token is state.conv/delta themselves).
    const capture = (i: number, S: mx.array) => {
      const rows = mx.take(convInput, mx.arange(i + 1, i + 1 + carried, 1, mx.int32), 1);
      state.snapshots.set(state.position + i + 1, { conv: rows, delta: S });
    };
    const [y, S] = gatedDeltaRule(
      { q, k, v, logDecay, beta },
      S0,
      state.position,
      (position) => state.capturesAt(position),
      capture,
      state.snapshotTokens,
    );
    state.delta = S;
    state.position += tokens;
    if (state.capturesAt(state.position)) state.snapshots.set(state.position, { conv: state.conv, delta: S });
    return y;
  }
}

/** Holds conv1d.weight under the checkpoint's name. */
class Conv1dWeight extends Module {
  weight: mx.array;

  constructor(channels: number, kernel: number) {
    super();
    this.weight = mx.zeros([channels, kernel, 1], mx.float32);
  }
}

/** x / sqrt(sum(x^2) + 1e-6) over the last axis. */
function l2Normalize(x: mx.array): mx.array {
  return mx.multiply(x, mx.rsqrt(mx.add(mx.sum(mx.square(x), -1, true), 1e-6)));
}

/**
 * Softmax attention with an output gate: q_proj yields per head the query and a gate of
 * head_dim each, q/k RMSNorms per head, rope over the first ropeDims dims of each head, and
 * o_proj(attention * sigmoid(gate)).
 */
class Attention extends Module {
  q_proj: Linear;
  k_proj: Linear;
  v_proj: Linear;
  o_proj: Linear;
  q_norm: RMSNorm;
  k_norm: RMSNorm;
  readonly #heads: number;
  readonly #kvHeads: number;
  readonly #headDim: number;
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
    this.q_proj = new Linear(hiddenSize, heads * headDim * 2, attentionBias);
    this.k_proj = new Linear(hiddenSize, kvHeads * headDim, attentionBias);
    this.v_proj = new Linear(hiddenSize, kvHeads * headDim, attentionBias);
    this.o_proj = new Linear(heads * headDim, hiddenSize, attentionBias);
    this.q_norm = new RMSNorm(headDim, config.rmsNormEps);
    this.k_norm = new RMSNorm(headDim, config.rmsNormEps);
    this.#heads = heads;
    this.#kvHeads = kvHeads;
    this.#headDim = headDim;
    // fast.rope rotates the first `dims` of each head and passes the rest through.
    this.#rope = new RotaryEmbedding({ ...config, headDim: config.ropeDims });
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const rows = x.shape[1];
    const projected = this.q_proj.forward(x).reshape(1, rows, this.#heads, 2 * this.#headDim);
    const [query, gate] = mx.split(projected, 2, -1);
    const queries = this.q_norm.forward(query.transpose(0, 2, 1, 3));
    const keys = this.k_norm.forward(splitHeads(this.k_proj.forward(x), this.#kvHeads));
    const values = splitHeads(this.v_proj.forward(x), this.#kvHeads);
    const out = attendSegments(queries, keys, values, this.#rope, segments, 1 / Math.sqrt(this.#headDim));
    return this.o_proj.forward(mx.multiply(mergeHeads(out), mx.sigmoid(gate.reshape(1, rows, -1))));
  }
}

/** Pre-norm residual block around either kind of mixer. */
class DecoderLayer extends Module {
  linear_attn?: GatedDeltaNet;
  self_attn?: Attention;
  mlp: MLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;

  constructor(config: ModelConfig, recurrent: boolean) {
    super();
    if (recurrent) this.linear_attn = new GatedDeltaNet(config, config.linearAttention!);
    else this.self_attn = new Attention(config);
    this.mlp = new MLP(config);
    this.input_layernorm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
    this.post_attention_layernorm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
  }

  forward(x: mx.array, mix: (normed: mx.array) => mx.array): mx.array {
    const h = mx.add(x, mix(this.input_layernorm.forward(x)));
    return mx.add(h, this.mlp.forward(this.post_attention_layernorm.forward(h)));
  }
}

/** The `model.` part of a checkpoint. */
class Qwen35Model extends Module {
  embed_tokens: Embedding;
  layers: DecoderLayer[];
  norm: RMSNorm;

  constructor(config: ModelConfig) {
    super();
    this.embed_tokens = new Embedding(config.vocabSize, config.hiddenSize);
    this.layers = config.layerTypes.map((t) => new DecoderLayer(config, t === "linear_attention"));
    this.norm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
  }

  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
    const masks = segments.map((s) => segmentMask(s, null));
    let h = this.embed_tokens.forward(inputs);
    this.layers.forEach((layer, i) => {
      h = layer.forward(h, (normed) => {
        if (layer.linear_attn) {
          return layer.linear_attn.forward(
            normed,
            segments.map((s) => ({ rows: s.rows, state: recurrentState(s, i) })),
          );
        }
        return layer.self_attn!.forward(
          normed,
          segments.map((s, j) => ({ rows: s.rows, mask: masks[j], cache: s.cache.layers[i] })),
        );
      });
    });
    return this.norm.forward(rowsForLogits(h, segments, logitsFor));
  }
}

function recurrentState(s: Segment, layer: number): RecurrentState {
  const state = s.cache.recurrent[layer];
  if (!state)
    throw new RangeError(`layer ${layer} is recurrent but the cache holds no recurrent state for it`);
  return state;
}

/** Qwen3.5 with a separate lm_head, or the output projection tied to the embeddings. */
class Qwen35ForCausalLM extends Module implements CausalLM {
  model: Qwen35Model;
  lm_head?: Linear;

  constructor(config: ModelConfig) {
    super();
    this.model = new Qwen35Model(config);
    if (!config.tieWordEmbeddings) this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }

  rowProducts(): RowProduct[] {
    return collectRowProducts(this, this.lm_head ? null : this.model.embed_tokens);
  }

  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
    const h = this.model.forward(inputs, segments, logitsFor);
    return this.lm_head ? this.lm_head.forward(h) : this.model.embed_tokens.asLinear(h);
  }
}

/** Builds a Qwen3.5 dense text model with placeholder weights of the checkpoint's shapes. */
export function createModel(config: ModelConfig): CausalLM {
  if (!config.linearAttention) throw new RangeError("qwen3_5: the config has no linear attention settings");
  return new Qwen35ForCausalLM(config);
}
