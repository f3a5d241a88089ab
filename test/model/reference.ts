import type { ModelConfig } from "../../src/model/config";

/**
 * An independent forward pass in plain TypeScript and float64, written from the Hugging Face
 * model definitions without MLX, to check the MLX architectures against (no reference framework
 * can be installed here). Slow and simple on purpose: tiny models only. Used by tests.
 */

/** A weight as row-major float64 values. */
export interface ReferenceTensor {
  shape: number[];
  data: Float64Array;
}

/** Where each architecture puts biases and norms, per Hugging Face's modeling code. */
interface ArchitectureTraits {
  qkvBias: (c: ModelConfig) => boolean;
  outputBias: (c: ModelConfig) => boolean;
  qkNorm: boolean;
  /** The sliding window of a layer, or null where it attends to every earlier position. */
  slidingWindow: (c: ModelConfig, layer: number) => number | null;
  /** Gemma: (1 + weight) norms, scaled embeddings, norms after attention and MLP too, GELU. */
  gemma?: boolean;
  /**
   * Qwen3.5: "linear_attention" layers are Gated DeltaNet (see gatedDeltaNet); the attention
   * layers' q_proj also yields a sigmoid output gate, and rope turns only the first ropeDims dims.
   */
  qwen35?: boolean;
}

const GEMMA3: ArchitectureTraits = {
  qkvBias: (c) => c.attentionBias,
  outputBias: (c) => c.attentionBias,
  qkNorm: true,
  slidingWindow: (c, layer) => (c.layerTypes[layer] === "sliding_attention" ? c.slidingWindow : null),
  gemma: true,
};

const TRAITS: Record<string, ArchitectureTraits> = {
  llama: {
    qkvBias: (c) => c.attentionBias,
    outputBias: (c) => c.attentionBias,
    qkNorm: false,
    slidingWindow: () => null,
  },
  mistral: {
    qkvBias: () => false,
    outputBias: () => false,
    qkNorm: false,
    slidingWindow: (c) => c.slidingWindow,
  },
  qwen2: { qkvBias: () => true, outputBias: () => false, qkNorm: false, slidingWindow: () => null },
  qwen3: {
    qkvBias: (c) => c.attentionBias,
    outputBias: (c) => c.attentionBias,
    qkNorm: true,
    slidingWindow: () => null,
  },
  gemma3_text: GEMMA3,
  qwen3_5: {
    qkvBias: (c) => c.attentionBias,
    outputBias: (c) => c.attentionBias,
    qkNorm: true,
    slidingWindow: () => null,
    qwen35: true,
  },
};

/** Logits [T][vocab] for `tokens` at positions 0..T-1 (no cache: every position is recomputed). */
export function referenceForward(
  config: ModelConfig,
  weights: Map<string, ReferenceTensor>,
  tokens: number[],
): Float64Array[] {
  const traits = TRAITS[config.modelType];
  if (!traits) throw new RangeError(`no reference for model_type ${config.modelType}`);
  const w = (name: string): ReferenceTensor => {
    const t = weights.get(name);
    if (!t) throw new RangeError(`reference: missing weight ${name}`);
    return t;
  };
  const { hiddenSize, numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim } = config;
  const eps = config.rmsNormEps;
  const gemma = traits.gemma === true;
  // Gemma's norms scale by (1 + weight); Hugging Face computes that in float32 from the weight.
  const norm = (x: Float64Array, name: string) =>
    rmsNorm(x, gemma ? w(name).data.map((v) => 1 + v) : w(name).data, eps);
  // Gemma's local layers rotate with their own base and no scaling.
  const localFrequencies =
    config.ropeLocalTheta === null
      ? null
      : ropeInverseFrequencies({ ...config, ropeTheta: config.ropeLocalTheta, ropeScaling: null });
  const globalFrequencies = ropeInverseFrequencies({ ...config, headDim: config.ropeDims });
  const scoreScale = 1 / Math.sqrt(config.queryPreAttnScalar ?? headDim);

  const embeddings = w("model.embed_tokens.weight");
  // Gemma multiplies embeddings by sqrt(hidden_size) rounded to bfloat16 (Hugging Face rounds it
  // to the checkpoint's dtype, bfloat16 for Gemma 3; mlx-lm always to bfloat16).
  const embedScale = gemma ? roundToBfloat16(Math.sqrt(hiddenSize)) : 1;
  let hidden: Float64Array[] = tokens.map((t) =>
    embeddings.data.slice(t * hiddenSize, (t + 1) * hiddenSize).map((v) => v * embedScale),
  );

  for (let layer = 0; layer < config.numHiddenLayers; layer++) {
    const p = `model.layers.${layer}.`;
    const window = traits.slidingWindow(config, layer);
    const inverseFrequencies = window !== null && localFrequencies ? localFrequencies : globalFrequencies;
    const bias = (name: string, present: boolean) => (present ? w(`${p}${name}.bias`) : null);
    const normed = hidden.map((x) => norm(x, `${p}input_layernorm.weight`));
    let mixed: Float64Array[];
    if (config.layerTypes[layer] === "linear_attention") {
      mixed = gatedDeltaNet(config, (name) => w(`${p}linear_attn.${name}`), normed);
    } else {
      let q = normed.map((x) =>
        linear(x, w(`${p}self_attn.q_proj.weight`), bias("self_attn.q_proj", traits.qkvBias(config))),
      );
      // Qwen3.5: each head's q_proj output is [query (headDim), gate (headDim)].
      let gate: Float64Array[] | null = null;
      if (traits.qwen35) {
        gate = q.map((x) => x.filter((_, i) => i % (2 * headDim) >= headDim));
        q = q.map((x) => x.filter((_, i) => i % (2 * headDim) < headDim));
      }
      let k = normed.map((x) =>
        linear(x, w(`${p}self_attn.k_proj.weight`), bias("self_attn.k_proj", traits.qkvBias(config))),
      );
      const v = normed.map((x) =>
        linear(x, w(`${p}self_attn.v_proj.weight`), bias("self_attn.v_proj", traits.qkvBias(config))),
      );
      if (traits.qkNorm) {
        q = q.map((x) => perHead(x, heads, headDim, (h) => norm(h, `${p}self_attn.q_norm.weight`)));
        k = k.map((x) => perHead(x, kvHeads, headDim, (h) => norm(h, `${p}self_attn.k_norm.weight`)));
      }
      q = q.map((x, pos) => perHead(x, heads, headDim, (h) => rotate(h, pos, inverseFrequencies)));
      k = k.map((x, pos) => perHead(x, kvHeads, headDim, (h) => rotate(h, pos, inverseFrequencies)));

      const attended = q.map((query, pos) => {
        const out = new Float64Array(heads * headDim);
        for (let h = 0; h < heads; h++) {
          // Grouped-query attention: consecutive query heads share one key/value head.
          const kvHead = Math.floor(h / (heads / kvHeads));
          const first = window === null ? 0 : Math.max(0, pos - window + 1);
          const scores: number[] = [];
          for (let j = first; j <= pos; j++) {
            let dot = 0;
            for (let d = 0; d < headDim; d++) dot += query[h * headDim + d] * k[j][kvHead * headDim + d];
            scores.push(dot * scoreScale);
          }
          const probs = softmax(scores);
          for (let j = first; j <= pos; j++) {
            for (let d = 0; d < headDim; d++)
              out[h * headDim + d] += probs[j - first] * v[j][kvHead * headDim + d];
          }
        }
        return out;
      });
      mixed = attended.map((x, pos) =>
        linear(
          gate ? x.map((value, i) => value * sigmoid(gate[pos][i])) : x,
          w(`${p}self_attn.o_proj.weight`),
          bias("self_attn.o_proj", traits.outputBias(config)),
        ),
      );
    }
    const attention = mixed;
    // Gemma normalises the attention output before the residual and the MLP input with its own
    // norm; the others normalise the MLP input with post_attention_layernorm.
    hidden = gemma
      ? hidden.map((x, i) => add(x, norm(attention[i], `${p}post_attention_layernorm.weight`)))
      : hidden.map((x, i) => add(x, attention[i]));

    const mlpNorm = gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm";
    const mlpIn = hidden.map((x) => norm(x, `${p}${mlpNorm}.weight`));
    const mlpOut = mlpIn.map((x) => {
      const gate = linear(x, w(`${p}mlp.gate_proj.weight`), null);
      const up = linear(x, w(`${p}mlp.up_proj.weight`), null);
      const act = gate.map((g, i) => (gemma ? geluTanh(g) : g / (1 + Math.exp(-g))) * up[i]);
      return linear(act, w(`${p}mlp.down_proj.weight`), null);
    });
    hidden = gemma
      ? hidden.map((x, i) => add(x, norm(mlpOut[i], `${p}post_feedforward_layernorm.weight`)))
      : hidden.map((x, i) => add(x, mlpOut[i]));
  }

  const head = config.tieWordEmbeddings ? embeddings : w("lm_head.weight");
  return hidden.map((x) => linear(norm(x, "model.norm.weight"), head, null));
}

/**
 * A Gated DeltaNet layer over the whole sequence (Hugging Face's Qwen3_5GatedDeltaNet with
 * torch_recurrent_gated_delta_rule; weights in mlx-lm's layout: conv1d [channels, kernel, 1],
 * plain norm weight). Written per head and element, with S[dv][dk] per value head:
 *   qkv = in_proj_qkv x; causal depthwise conv (zero history) and silu; q, k l2-normalised, q / sqrt(Dk);
 *   g = exp(-exp(A_log) softplus(a + dt_bias)), beta = sigmoid(b);
 *   S = g S; S += beta (v - S k) k^T; y = S q; out = out_proj(rmsnorm(y) w * silu(z)).
 */
function gatedDeltaNet(
  config: ModelConfig,
  w: (name: string) => ReferenceTensor,
  xs: Float64Array[],
): Float64Array[] {
  const {
    numKeyHeads: hk,
    numValueHeads: hv,
    keyHeadDim: dk,
    valueHeadDim: dv,
    convKernel,
  } = config.linearAttention!;
  const keyDim = hk * dk;
  const channels = 2 * keyDim + hv * dv;
  const qkv = xs.map((x) => linear(x, w("in_proj_qkv.weight"), null));
  const conv = w("conv1d.weight").data; // [channels, kernel, 1]
  const activated = qkv.map((_, t) => {
    const out = new Float64Array(channels);
    for (let c = 0; c < channels; c++) {
      let sum = 0;
      for (let j = 0; j < convKernel; j++) {
        const source = t - (convKernel - 1) + j;
        if (source >= 0) sum += conv[c * convKernel + j] * qkv[source][c];
      }
      out[c] = sum * sigmoid(sum);
    }
    return out;
  });
  const aLog = w("A_log").data;
  const dtBias = w("dt_bias").data;
  const normWeight = w("norm.weight").data;
  const state = Array.from({ length: hv }, () => Array.from({ length: dv }, () => new Float64Array(dk)));
  return xs.map((x, t) => {
    const z = linear(x, w("in_proj_z.weight"), null);
    const b = linear(x, w("in_proj_b.weight"), null);
    const a = linear(x, w("in_proj_a.weight"), null);
    const l2 = (v: Float64Array) => {
      const inv = 1 / Math.sqrt(v.reduce((s, e) => s + e * e, 0) + 1e-6);
      return v.map((e) => e * inv);
    };
    const gated = new Float64Array(hv * dv);
    for (let h = 0; h < hv; h++) {
      const kh = Math.floor(h / (hv / hk));
      const q = l2(activated[t].slice(kh * dk, (kh + 1) * dk)).map((e) => e / Math.sqrt(dk));
      const k = l2(activated[t].slice(keyDim + kh * dk, keyDim + (kh + 1) * dk));
      const v = activated[t].slice(2 * keyDim + h * dv, 2 * keyDim + (h + 1) * dv);
      const softplus = Math.log1p(Math.exp(a[h] + dtBias[h]));
      const g = Math.exp(-Math.exp(aLog[h]) * softplus);
      const beta = sigmoid(b[h]);
      const y = new Float64Array(dv);
      for (let i = 0; i < dv; i++) {
        const row = state[h][i];
        let memory = 0;
        for (let j = 0; j < dk; j++) {
          row[j] *= g;
          memory += row[j] * k[j];
        }
        const delta = beta * (v[i] - memory);
        for (let j = 0; j < dk; j++) {
          row[j] += k[j] * delta;
          y[i] += row[j] * q[j];
        }
      }
      const normed = rmsNorm(y, normWeight, config.rmsNormEps);
      for (let i = 0; i < dv; i++) {
        const zi = z[h * dv + i];
        gated[h * dv + i] = normed[i] * zi * sigmoid(zi);
      }
    }
    return linear(gated, w("out_proj.weight"), null);
  });
}

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/** GELU, tanh approximation (PyTorch's approximate="tanh"). */
function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
}

/** The nearest bfloat16 value (ties to even), through float32's bits. */
function roundToBfloat16(x: number): number {
  const f = new Float32Array([x]);
  const bits = new Uint32Array(f.buffer);
  bits[0] = (bits[0] + 0x7fff + ((bits[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
}

/** Radians per position of each rotated pair, with the config's rope scaling. */
function ropeInverseFrequencies(config: ModelConfig): number[] {
  const { headDim, ropeTheta, ropeScaling } = config;
  const result: number[] = [];
  for (let i = 0; i < headDim / 2; i++) {
    let inv = 1 / Math.pow(ropeTheta, (2 * i) / headDim);
    if (ropeScaling?.type === "linear") inv /= ropeScaling.factor;
    if (ropeScaling?.type === "llama3") {
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: original } = ropeScaling;
      const wavelength = (2 * Math.PI) / inv;
      if (wavelength > original / lowFreqFactor) {
        inv /= factor;
      } else if (wavelength >= original / highFreqFactor) {
        const smooth = (original / wavelength - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        inv = (1 - smooth) * (inv / factor) + smooth * inv;
      }
    }
    result.push(inv);
  }
  return result;
}

/**
 * Rotate-half rope over the first 2 * inverseFrequencies.length dims (all of them but under
 * partial rotary): pairs (i, i + half) turn by position * frequency i, the rest pass through.
 */
function rotate(x: Float64Array, position: number, inverseFrequencies: number[]): Float64Array {
  const half = inverseFrequencies.length;
  const out = Float64Array.from(x);
  for (let i = 0; i < half; i++) {
    const angle = position * inverseFrequencies[i];
    const [cos, sin] = [Math.cos(angle), Math.sin(angle)];
    out[i] = x[i] * cos - x[i + half] * sin;
    out[i + half] = x[i + half] * cos + x[i] * sin;
  }
  return out;
}

function perHead(
  x: Float64Array,
  heads: number,
  headDim: number,
  f: (head: Float64Array) => Float64Array,
): Float64Array {
  const out = new Float64Array(x.length);
  for (let h = 0; h < heads; h++) out.set(f(x.slice(h * headDim, (h + 1) * headDim)), h * headDim);
  return out;
}

function rmsNorm(x: Float64Array, weight: Float64Array, eps: number): Float64Array {
  let sumSquares = 0;
  for (const value of x) sumSquares += value * value;
  const scale = 1 / Math.sqrt(sumSquares / x.length + eps);
  return x.map((value, i) => value * scale * weight[i]);
}

/** x W^T + b with W [out, in]. */
function linear(x: Float64Array, weight: ReferenceTensor, bias: ReferenceTensor | null): Float64Array {
  const [rows, cols] = weight.shape;
  if (cols !== x.length)
    throw new RangeError(`reference: ${x.length} inputs for a [${rows}, ${cols}] weight`);
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sum = bias ? bias.data[r] : 0;
    for (let c = 0; c < cols; c++) sum += weight.data[r * cols + c] * x[c];
    out[r] = sum;
  }
  return out;
}

function add(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((value, i) => value + b[i]);
}

function softmax(scores: number[]): number[] {
  const max = Math.max(...scores);
  const exps = scores.map((s) => Math.exp(s - max));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}
