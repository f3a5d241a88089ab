import { core as mx } from "@frost-beta/mlx";
import type { ModelConfig } from "../config";
import type { RowProduct } from "../batch-rows";
import {
  type AttentionModule,
  type CausalLM,
  Embedding,
  type LayerSegment,
  Linear,
  type LogitsFor,
  Module,
  type Segment,
  collectRowProducts,
  rowsForLogits,
  segmentMask,
} from "./base";
import { RotaryEmbedding, attendSegments, mergeHeads, splitHeads } from "./attention";

/**
 * Gemma 3 text models (after mlx-lm models/gemma3_text.py and Hugging Face's Gemma3ForCausalLM).
 * What sets it apart from Llama:
 * - local and global layers: `layer_types` (or every `sliding_window_pattern`-th layer global)
 *   decides which layers attend through a sliding window; the local ones rotate with their own
 *   rope base (`rope_local_base_freq`, never scaled), the global ones with `rope_theta` and
 *   `rope_scaling`. The window is applied through the attention mask and the KV cache keeps every
 *   position (as in mistral.ts), so a prefix cache restores any range exactly; mlx-lm's rotating
 *   cache would only save memory.
 * - q/k RMSNorms over each head before rope, softmax scale `query_pre_attn_scalar ** -0.5`;
 * - RMSNorms that scale by (1 + weight), four per block (around attention and around the MLP);
 * - a GELU (tanh approximation) gated MLP;
 * - embeddings multiplied by sqrt(hidden_size), that factor rounded to bfloat16 first as mlx-lm
 *   does (Hugging Face rounds it to the weights' dtype, bfloat16 in released checkpoints), and
 *   the output projection tied to them.
 */

/** Gemma's RMSNorm: x / rms(x) * (1 + weight), so a zero weight is the identity scale. */
class RMSNorm extends Module {
  weight: mx.array;
  readonly #eps: number;

  constructor(dims: number, eps: number) {
    super();
    this.weight = mx.zeros([dims], mx.float32);
    this.#eps = eps;
  }

  forward(x: mx.array): mx.array {
    return mx.fast.rmsNorm(x, mx.add(this.weight, 1), this.#eps);
  }
}

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

  constructor(config: ModelConfig, sliding: boolean) {
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
    this.#scale = 1 / Math.sqrt(config.queryPreAttnScalar ?? headDim);
    this.#rope = new RotaryEmbedding(
      sliding && config.ropeLocalTheta !== null
        ? { ...config, ropeTheta: config.ropeLocalTheta, ropeScaling: null }
        : config,
    );
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const queries = this.q_norm.forward(splitHeads(this.q_proj.forward(x), this.#heads));
    const keys = this.k_norm.forward(splitHeads(this.k_proj.forward(x), this.#kvHeads));
    const values = splitHeads(this.v_proj.forward(x), this.#kvHeads);
    const out = attendSegments(queries, keys, values, this.#rope, segments, this.#scale);
    return this.o_proj.forward(mergeHeads(out));
  }
}

/** down(gelu_tanh(gate(x)) * up(x)). */
class MLP extends Module {
  gate_proj: Linear;
  up_proj: Linear;
  down_proj: Linear;

  constructor(config: ModelConfig) {
    super();
    this.gate_proj = new Linear(config.hiddenSize, config.intermediateSize, false);
    this.up_proj = new Linear(config.hiddenSize, config.intermediateSize, false);
    this.down_proj = new Linear(config.intermediateSize, config.hiddenSize, false);
  }

  forward(x: mx.array): mx.array {
    return this.down_proj.forward(geluGate(this.gate_proj.forward(x), this.up_proj.forward(x)));
  }
}

/**
 * gelu(gate) * up with GELU's tanh approximation (`gelu_pytorch_tanh`, mlx's `gelu_approx`), fused
 * into one elementwise pass like base.ts's swiglu.
 */
const geluGate = mx.compile((gate: mx.array, up: mx.array): mx.array => {
  const cubic = mx.add(gate, mx.multiply(0.044715, mx.power(gate, 3)));
  const gelu = mx.multiply(
    mx.multiply(0.5, gate),
    mx.add(1, mx.tanh(mx.multiply(Math.sqrt(2 / Math.PI), cubic))),
  );
  return mx.multiply(gelu, up);
}, true);

/** Norms before and after both attention and MLP; the residual adds the post-normed output. */
class TransformerBlock extends Module {
  self_attn: Attention;
  mlp: MLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;
  pre_feedforward_layernorm: RMSNorm;
  post_feedforward_layernorm: RMSNorm;

  constructor(config: ModelConfig, sliding: boolean) {
    super();
    const { hiddenSize, rmsNormEps } = config;
    this.self_attn = new Attention(config, sliding);
    this.mlp = new MLP(config);
    this.input_layernorm = new RMSNorm(hiddenSize, rmsNormEps);
    this.post_attention_layernorm = new RMSNorm(hiddenSize, rmsNormEps);
    this.pre_feedforward_layernorm = new RMSNorm(hiddenSize, rmsNormEps);
    this.post_feedforward_layernorm = new RMSNorm(hiddenSize, rmsNormEps);
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const attention = this.self_attn.forward(this.input_layernorm.forward(x), segments);
    const h = mx.add(x, this.post_attention_layernorm.forward(attention));
    const mlp = this.mlp.forward(this.pre_feedforward_layernorm.forward(h));
    return mx.add(h, this.post_feedforward_layernorm.forward(mlp));
  }
}

/** The `model.` part of a checkpoint: scaled embeddings, local and global blocks, final norm. */
class Gemma3Model extends Module {
  embed_tokens: Embedding;
  layers: TransformerBlock[];
  norm: RMSNorm;
  /** Per layer: its sliding window, or null for a global layer. */
  readonly #windows: (number | null)[];
  readonly #embedScale: mx.array;

  constructor(config: ModelConfig) {
    super();
    this.embed_tokens = new Embedding(config.vocabSize, config.hiddenSize);
    this.#windows = config.layerTypes.map((t) => (t === "sliding_attention" ? config.slidingWindow : null));
    this.layers = this.#windows.map((window) => new TransformerBlock(config, window !== null));
    this.norm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
    this.#embedScale = mx.array(Math.sqrt(config.hiddenSize), mx.bfloat16).astype(mx.float32);
  }

  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
    // One mask per segment and distinct window (at most two: local and global), shared by the
    // layers of that kind.
    const masks = new Map<number | null, mx.array[]>();
    for (const window of new Set(this.#windows)) {
      masks.set(
        window,
        segments.map((s) => segmentMask(s, window)),
      );
    }
    let h = mx.multiply(this.embed_tokens.forward(inputs), this.#embedScale);
    this.layers.forEach((layer, i) => {
      const layerMasks = masks.get(this.#windows[i])!;
      h = layer.forward(
        h,
        segments.map((s, j) => ({ rows: s.rows, mask: layerMasks[j], cache: s.cache.layers[i] })),
      );
    });
    return this.norm.forward(rowsForLogits(h, segments, logitsFor));
  }
}

/** Gemma 3 with its output projection tied to the embeddings, or a separate lm_head. */
class Gemma3ForCausalLM extends Module implements CausalLM {
  model: Gemma3Model;
  lm_head?: Linear;

  constructor(config: ModelConfig) {
    super();
    this.model = new Gemma3Model(config);
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

/** Builds a Gemma 3 text model with placeholder weights of the checkpoint's shapes. */
export function createModel(config: ModelConfig): CausalLM {
  return new Gemma3ForCausalLM(config);
}
