import * as os from "node:os";
import { core as mx } from "@frost-beta/mlx";
import type { Llama3RopeScaling, ModelConfig } from "../config";
import type { KVCache } from "../kv-cache";
import type { ModelCache } from "../model-cache";
import { IDENTITY_ROWS, type RowPlan, type RowProduct, withPaddedRows } from "../batch-rows";

/**
 * Building blocks shared by the architectures, after mlx-lm's models/base.py and the parts of
 * models/llama.py that other architectures import. Every module's field names are the tensor names
 * of Hugging Face checkpoints, so weights load without a mapping table.
 */

/**
 * Base of every layer: parameters are the public fields holding arrays, found by walking fields,
 * arrays of modules and sub-modules, and named by their path ("layers.0.self_attn.q_proj.weight").
 * Fields not meant as parameters are private (#), so the walk does not see them.
 */
export abstract class Module {
  /** Every parameter with its dotted name, in field order. */
  namedParameters(prefix = ""): [string, mx.array][] {
    const out: [string, mx.array][] = [];
    const visit = (name: string, value: unknown): void => {
      if (value instanceof mx.array) out.push([name, value]);
      else if (value instanceof Module) out.push(...value.namedParameters(`${name}.`));
      else if (Array.isArray(value)) value.forEach((item, i) => visit(`${name}.${i}`, item));
    };
    for (const [key, value] of Object.entries(this)) visit(`${prefix}${key}`, value);
    return out;
  }

  /** Replaces the parameter at a dotted name; the name must exist. */
  setParameter(name: string, value: mx.array): void {
    const parts = name.split(".");
    let owner: Record<string, unknown> = this as unknown as Record<string, unknown>;
    for (const part of parts.slice(0, -1)) {
      const next = owner[part];
      if (typeof next !== "object" || next === null) throw new RangeError(`no parameter named ${name}`);
      owner = next as Record<string, unknown>;
    }
    const leaf = parts[parts.length - 1];
    if (!(owner[leaf] instanceof mx.array)) throw new RangeError(`no parameter named ${name}`);
    owner[leaf] = value;
  }
}

/**
 * Placeholder for a weight until the loader fills it: carries the shape the checkpoint must have.
 * `zeros` is a broadcast constant, so an unfilled placeholder costs no memory.
 */
function placeholder(shape: number[]): mx.array {
  return mx.zeros(shape, mx.float32);
}

/**
 * y = x W^T (+ b), with W [outputDims, inputDims] as checkpoints store it.
 *
 * The rows of x go through `rowPlan` first (see batch-rows.ts): BLAS picks its kernel by the row
 * count, and a row's result can differ in the last bits between kernels, so a row count the plan
 * does not trust is padded with zero rows to one it does. That keeps a sequence's result the same
 * whatever else shares its batch.
 */
export class Linear extends Module implements RowProduct {
  weight: mx.array;
  bias?: mx.array;
  /** Row counts padded before the product; set by calibrateBatchRows. */
  #rowPlan: RowPlan = IDENTITY_ROWS;

  constructor(inputDims: number, outputDims: number, bias: boolean) {
    super();
    this.weight = placeholder([outputDims, inputDims]);
    if (bias) this.bias = placeholder([outputDims]);
  }

  set rowPlan(plan: RowPlan) {
    this.#rowPlan = plan;
  }

  product(x: mx.array): mx.array {
    return this.bias ? mx.addmm(this.bias, x, this.weight.T) : mx.matmul(x, this.weight.T);
  }

  forward(x: mx.array): mx.array {
    return withPaddedRows(x, this.#rowPlan, (rows) => this.product(rows));
  }
}

/** Token embedding table [vocab, dims]; doubles as the output projection when tied. */
export class Embedding extends Module implements RowProduct {
  weight: mx.array;
  /** Row counts padded before the output projection; see Linear. */
  #rowPlan: RowPlan = IDENTITY_ROWS;

  constructor(vocab: number, dims: number) {
    super();
    this.weight = placeholder([vocab, dims]);
  }

  set rowPlan(plan: RowPlan) {
    this.#rowPlan = plan;
  }

  forward(tokens: mx.array): mx.array {
    return this.weight.index(tokens);
  }

  product(x: mx.array): mx.array {
    return mx.matmul(x, this.weight.T);
  }

  asLinear(x: mx.array): mx.array {
    return withPaddedRows(x, this.#rowPlan, (rows) => this.product(rows));
  }
}

/** x / rms(x) * weight over the last axis. */
export class RMSNorm extends Module {
  weight: mx.array;
  readonly #eps: number;

  constructor(dims: number, eps: number) {
    super();
    this.weight = placeholder([dims]);
    this.#eps = eps;
  }

  forward(x: mx.array): mx.array {
    return mx.fast.rmsNorm(x, this.weight, this.#eps);
  }
}

/** Which positions a forward pass returns logits for. */
export type LogitsFor = "last" | "all";

/** One sequence's share of a forward pass: its next `rows` input rows, run over its own cache. */
export interface Segment {
  rows: number;
  cache: ModelCache;
}

/** A segment as one attention layer sees it: its rows, its causal mask and that layer's cache. */
export interface LayerSegment {
  rows: number;
  mask: mx.array;
  cache: KVCache;
}

/** A decoder-only language model as the loader and the engine see it. */
export interface CausalLM extends Module {
  /**
   * Runs tokens [1, R] (int32), the rows of `segments` one after the other: each segment's rows
   * sit at positions cache.offset .. cache.offset + rows - 1 of its own cache, and their keys and
   * values are appended to it. Returns float32 logits, lazily: [1, R, vocab] for "all" (one
   * segment), or for "last" the last row of each segment, [1, segments, vocab].
   */
  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array;
  /** Every matrix product a forward pass runs over all rows at once (see batch-rows.ts). */
  rowProducts(): RowProduct[];
}

/**
 * Rotary position embedding in the "rotate half" layout Hugging Face checkpoints use.
 * Plain and linearly scaled rope run on mx.fast.rope. Llama 3's scaling stretches each frequency
 * differently, which needs a per-frequency table; this MLX build's fast.rope takes no table, so
 * that variant rotates with explicit cos/sin.
 */
export class RotaryEmbedding {
  private readonly inverseFrequencies: mx.array | null = null;
  private readonly scale: number = 1;

  constructor(private readonly config: ModelConfig) {
    const scaling = config.ropeScaling;
    if (scaling?.type === "linear") this.scale = 1 / scaling.factor;
    if (scaling?.type === "llama3") {
      this.inverseFrequencies = mx.array(llama3InverseFrequencies(config.headDim, config.ropeTheta, scaling));
    }
  }

  /** Rotates x [1, heads, T, headDim] whose first token sits at position `offset`. */
  apply(x: mx.array, offset: number): mx.array {
    if (!this.inverseFrequencies) {
      return mx.fast.rope(x, this.config.headDim, false, this.config.ropeTheta, this.scale, offset);
    }
    const tokens = x.shape[2];
    const positions = mx.arange(offset, offset + tokens, 1, mx.float32).reshape(tokens, 1);
    const angles = mx.multiply(positions, this.inverseFrequencies);
    const cos = mx.cos(angles);
    const sin = mx.sin(angles);
    const [x1, x2] = mx.split(x, 2, -1);
    return mx.concatenate(
      [
        mx.subtract(mx.multiply(x1, cos), mx.multiply(x2, sin)),
        mx.add(mx.multiply(x2, cos), mx.multiply(x1, sin)),
      ],
      -1,
    );
  }
}

/**
 * Llama 3.x inverse frequencies (radians per position for each rotated pair), as in Hugging Face's
 * `_compute_llama3_parameters`: long wavelengths are divided by `factor`, short ones kept, and the
 * band between blends smoothly. Computed in float64.
 */
export function llama3InverseFrequencies(headDim: number, theta: number, s: Llama3RopeScaling): number[] {
  const lowFreqWavelen = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
  const highFreqWavelen = s.originalMaxPositionEmbeddings / s.highFreqFactor;
  const result: number[] = [];
  for (let i = 0; i < headDim; i += 2) {
    const invFreq = 1 / Math.pow(theta, i / headDim);
    const wavelen = (2 * Math.PI) / invFreq;
    if (wavelen < highFreqWavelen) {
      result.push(invFreq);
    } else if (wavelen > lowFreqWavelen) {
      result.push(invFreq / s.factor);
    } else {
      const smooth =
        (s.originalMaxPositionEmbeddings / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
      result.push((1 - smooth) * (invFreq / s.factor) + smooth * invFreq);
    }
  }
  return result;
}

/**
 * Additive attention mask [T, span] for T queries at positions offset .. offset + T - 1 over the
 * first `span` positions of the cache buffer: 0 where a query may attend, -inf elsewhere.
 * Causality over absolute positions also hides positions the cache has not filled (see KVCache).
 * With a sliding window w, a query at p sees keys p - w + 1 ..= p.
 */
export function attentionMask(
  tokens: number,
  offset: number,
  span: number,
  slidingWindow: number | null,
): mx.array {
  const queries = mx.arange(offset, offset + tokens, 1, mx.int32).reshape(tokens, 1);
  const keys = mx.arange(0, span, 1, mx.int32).reshape(1, span);
  let visible = mx.lessEqual(keys, queries);
  if (slidingWindow !== null) {
    visible = mx.logicalAnd(visible, mx.greater(keys, mx.subtract(queries, slidingWindow)));
  }
  return mx.where(visible, 0, -Infinity);
}

/** Cache positions attention reads for a chunk ending at `end`: rounded up, within the buffer. */
export function attentionSpan(end: number, capacity: number): number {
  return Math.min(capacity, Math.ceil(end / ATTENTION_SPAN_STEP_TOKENS) * ATTENTION_SPAN_STEP_TOKENS);
}

/**
 * Applies rope at each segment's cache position, appends its keys and values to its cache and
 * attends over that cache alone. q/k/v are [1, heads, R, headDim] over every segment's rows; the
 * result has the same layout. Each sequence attends by itself, with exactly the operations it
 * would run alone: batching shares the projections, never the attention.
 */
export function attendSegments(
  queries: mx.array,
  keys: mx.array,
  values: mx.array,
  rope: RotaryEmbedding,
  segments: LayerSegment[],
  scale: number,
): mx.array {
  const attend = (q: mx.array, k: mx.array, v: mx.array, s: LayerSegment): mx.array => {
    const offset = s.cache.offset;
    const [allKeys, allValues] = s.cache.updateAndFetch(rope.apply(k, offset), v);
    return attentionFor(scale)(rope.apply(q, offset), allKeys, allValues, s.mask);
  };
  if (segments.length === 1) return attend(queries, keys, values, segments[0]);
  const outs: mx.array[] = [];
  let start = 0;
  for (const s of segments) {
    const rows = mx.Slice(start, start + s.rows);
    const part = (a: mx.array) => a.index(mx.Slice(), mx.Slice(), rows, mx.Slice());
    outs.push(attend(part(queries), part(keys), part(values), s));
    start += s.rows;
  }
  return mx.concatenate(outs, 2);
}

/**
 * Attention of queries over the first mask.shape[1] positions of the cache buffers, compiled once
 * per softmax scale.
 *
 * Compiled so that the slice of the cache buffer is an intermediate MLX never wraps in a JS
 * object: a view held by a JS wrapper pins the buffer until garbage collection and forces the
 * next cache write to copy it (see KVCache). Slicing instead of attending over the whole
 * buffer keeps a preallocated cache (prompt + max_tokens) from making every step scan its unused
 * tail. The slice length comes from the mask's shape, so each (T, length, capacity) gets its own
 * trace; lengths are multiples of ATTENTION_SPAN_STEP_TOKENS, which bounds how many there are.
 */
function attentionFor(scale: number): (q: mx.array, k: mx.array, v: mx.array, mask: mx.array) => mx.array {
  let attend = compiledAttention.get(scale);
  if (!attend) {
    attend = mx.compile((queries: mx.array, keysBuffer: mx.array, valuesBuffer: mx.array, mask: mx.array) => {
      const span = mx.Slice(0, mask.shape[1]);
      const keys = keysBuffer.index(mx.Slice(), mx.Slice(), span, mx.Slice());
      const values = valuesBuffer.index(mx.Slice(), mx.Slice(), span, mx.Slice());
      const [, heads, tokens, headDim] = queries.shape;
      const kvHeads = keys.shape[1];
      if (tokens <= FOLDED_QUERIES_MAX && heads > kvHeads) {
        return foldedAttention(queries, keys, values, mask, scale, kvHeads, heads / kvHeads, tokens, headDim);
      }
      const streams = attentionStreams();
      if (streams.length > 1 && kvHeads % streams.length === 0) {
        return attentionOnStreams(queries, keys, values, mask, scale, streams);
      }
      // scaledDotProductAttention broadcasts KV heads over query groups (GQA) itself.
      return mx.fast.scaledDotProductAttention(queries, keys, values, scale, mask);
    });
    compiledAttention.set(scale, attend);
  }
  return attend;
}

/** Queries up to which attention folds each KV head's query group into one product (decode). */
const FOLDED_QUERIES_MAX = 8;

/**
 * Grouped-query attention for a few queries, with each KV head's group of query heads folded into
 * the rows of one product: [kvHeads, group * tokens, headDim] against that head's keys. On this CPU
 * backend scaledDotProductAttention is MLX's decomposed fallback, which broadcasts the keys and
 * values over the group. Measured on the qwen2.5-0.5b shape, a decode step took 179 instead of 196 ms
 * at 8k positions and 147 instead of 153 ms at 1k (median of paired runs). The result is the same
 * softmax(q kᵀ · scale + mask) v, summed in another order (logits within 2e-5 at 8k).
 */
function foldedAttention(
  queries: mx.array,
  keys: mx.array,
  values: mx.array,
  mask: mx.array,
  scale: number,
  kvHeads: number,
  group: number,
  tokens: number,
  headDim: number,
): mx.array {
  const span = keys.shape[2];
  const q = mx.multiply(queries, scale).reshape(1, kvHeads, group * tokens, headDim);
  const scores = mx.add(
    mx.matmul(q, keys.transpose(0, 1, 3, 2)).reshape(1, kvHeads, group, tokens, span),
    mask,
  );
  const weights = mx.softmax(scores, -1, true).reshape(1, kvHeads, group * tokens, span);
  return mx.matmul(weights, values).reshape(1, kvHeads * group, tokens, headDim);
}

/**
 * Attention of many queries (prefill) split by KV head over CPU streams, each of which MLX runs on
 * a thread of its own. The matrix products already use every core through BLAS, but the mask, the
 * softmax and the copies between them run on one thread per stream, and over long contexts they are
 * most of attention's time. Each KV head's group is computed with exactly the operations it gets
 * unsplit, so the result is the same to the bit. Measured on the qwen2.5-0.5b shape: one layer's
 * attention of 512 queries over 8k positions took 392 instead of 576 ms, and a whole 512-token
 * prefill chunk at 7.7k positions 11.7 instead of 17.4 s (best of 3; 43.6 against 29.4 tokens/s).
 * Blocked, flash-style attention built from matmuls (tiles of keys, running max and sum, masked
 * tiles skipped) is slower here at every measured shape, 1.5x to 2x (bench/model/attention-blocked.ts):
 * MLX's elementwise exp runs scalar on this CPU, and only its softmax kernel is fast.
 */
export function attentionOnStreams(
  queries: mx.array,
  keys: mx.array,
  values: mx.array,
  mask: mx.array,
  scale: number,
  streams: mx.Stream[],
): mx.array {
  const heads = queries.shape[1] / streams.length;
  const kvHeads = keys.shape[1] / streams.length;
  const part = (a: mx.array, n: number, j: number) => a.index(mx.Slice(), mx.Slice(j * n, (j + 1) * n));
  const outs = streams.map((stream, j) =>
    mx.fast.scaledDotProductAttention(
      part(queries, heads, j),
      part(keys, kvHeads, j),
      part(values, kvHeads, j),
      scale,
      mask,
      stream,
    ),
  );
  return mx.concatenate(outs, 1);
}

let streamsForAttention: mx.Stream[] | undefined;

/** Two CPU streams where there are two cores or more (none otherwise). */
export function attentionStreams(): mx.Stream[] {
  streamsForAttention ??= os.availableParallelism() > 1 ? [mx.newStream(mx.cpu), mx.newStream(mx.cpu)] : [];
  return streamsForAttention;
}

/** One compiled attention per softmax scale (1 / sqrt(head_dim)), which the trace bakes in. */
const compiledAttention = new Map<
  number,
  (q: mx.array, k: mx.array, v: mx.array, mask: mx.array) => mx.array
>();

/** Granularity of the attended cache prefix; see attentionFor. */
export const ATTENTION_SPAN_STEP_TOKENS = 256;

/** [1, T, heads * headDim] -> [1, heads, T, headDim]. */
export function splitHeads(x: mx.array, heads: number): mx.array {
  const [batch, tokens] = x.shape;
  return x.reshape(batch, tokens, heads, -1).transpose(0, 2, 1, 3);
}

/** [1, heads, T, headDim] -> [1, T, heads * headDim]. */
export function mergeHeads(x: mx.array): mx.array {
  const [batch, , tokens] = x.shape;
  return x.transpose(0, 2, 1, 3).reshape(batch, tokens, -1);
}

/** SwiGLU feed-forward: down(silu(gate(x)) * up(x)). */
export class MLP extends Module {
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
    return this.down_proj.forward(swiglu(this.gate_proj.forward(x), this.up_proj.forward(x)));
  }
}

/**
 * silu(gate) * up as one fused elementwise pass (shapeless: one compilation serves every shape).
 * Measured on Qwen2.5-0.5B's MLP with 512 tokens: 25 ms instead of 35 ms per layer, and the
 * intermediate [T, intermediate_size] arrays never get JS wrappers that hold memory until GC.
 */
const swiglu = mx.compile(
  (gate: mx.array, up: mx.array): mx.array => mx.multiply(mx.multiply(gate, mx.sigmoid(gate)), up),
  true,
);

/** The attention module of an architecture: [1, R, hidden] in, [1, R, hidden] out. */
export interface AttentionModule extends Module {
  forward(x: mx.array, segments: LayerSegment[]): mx.array;
}

/** Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h)). */
export class TransformerBlock extends Module {
  self_attn: AttentionModule;
  mlp: MLP;
  input_layernorm: RMSNorm;
  post_attention_layernorm: RMSNorm;

  constructor(config: ModelConfig, selfAttn: AttentionModule) {
    super();
    this.self_attn = selfAttn;
    this.mlp = new MLP(config);
    this.input_layernorm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
    this.post_attention_layernorm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
  }

  forward(x: mx.array, segments: LayerSegment[]): mx.array {
    const h = mx.add(x, this.self_attn.forward(this.input_layernorm.forward(x), segments));
    return mx.add(h, this.mlp.forward(this.post_attention_layernorm.forward(h)));
  }
}

/** The `model.` part of a checkpoint: embeddings, blocks and the final norm. */
export class DecoderStack extends Module {
  embed_tokens: Embedding;
  layers: TransformerBlock[];
  norm: RMSNorm;
  readonly #slidingWindow: number | null;

  constructor(config: ModelConfig, makeAttention: (config: ModelConfig) => AttentionModule) {
    super();
    this.embed_tokens = new Embedding(config.vocabSize, config.hiddenSize);
    this.layers = Array.from(
      { length: config.numHiddenLayers },
      () => new TransformerBlock(config, makeAttention(config)),
    );
    this.norm = new RMSNorm(config.hiddenSize, config.rmsNormEps);
    this.#slidingWindow = config.slidingWindow;
  }

  /** Hidden states [1, rows, hidden] after the final norm, for the positions `logitsFor` asks. */
  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
    const masks = segments.map((s) => segmentMask(s, this.#slidingWindow));
    let h = this.embed_tokens.forward(inputs);
    this.layers.forEach((layer, i) => {
      h = layer.forward(
        h,
        segments.map((s, j) => ({ rows: s.rows, mask: masks[j], cache: s.cache.layers[i] })),
      );
    });
    // The final norm is per position, so dropping positions first saves work, most of all in
    // the vocabulary projection that follows.
    return this.norm.forward(rowsForLogits(h, segments, logitsFor));
  }
}

/**
 * Reserves a segment's cache for its rows and returns their causal mask over the span attention
 * reads, with an optional sliding window. Shared by every layer of that segment with this window.
 */
export function segmentMask({ rows, cache }: Segment, slidingWindow: number | null): mx.array {
  const offset = cache.offset;
  cache.reserve(offset + rows);
  return attentionMask(rows, offset, attentionSpan(offset + rows, cache.capacity), slidingWindow);
}

/** Hidden states h [1, R, hidden] reduced to the rows `logitsFor` asks (each segment's last for "last"). */
export function rowsForLogits(h: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
  if (logitsFor !== "last" || h.shape[1] <= segments.length) return h;
  if (segments.length === 1) return h.index(mx.Slice(), mx.Slice(h.shape[1] - 1), mx.Slice());
  let end = 0;
  const lastRows = segments.map((s) => (end += s.rows) - 1);
  return mx.take(h, mx.array(lastRows, mx.int32), 1);
}

/**
 * Every Linear under `root`, plus the embedding table when it doubles as the output projection:
 * the products a forward pass runs over all rows at once.
 */
export function collectRowProducts(root: Module, tiedEmbedding: Embedding | null): RowProduct[] {
  const products: RowProduct[] = [];
  const visit = (value: unknown): void => {
    if (value instanceof Linear) products.push(value);
    else if (value instanceof Module) Object.values(value).forEach(visit);
    else if (Array.isArray(value)) value.forEach(visit);
  };
  visit(root);
  if (tiedEmbedding) products.push(tiedEmbedding);
  return products;
}

/** Decoder stack plus the vocabulary projection, tied to the embeddings or a separate lm_head. */
export class DecoderLM extends Module implements CausalLM {
  model: DecoderStack;
  lm_head?: Linear;

  constructor(config: ModelConfig, makeAttention: (config: ModelConfig) => AttentionModule) {
    super();
    this.model = new DecoderStack(config, makeAttention);
    if (!config.tieWordEmbeddings) this.lm_head = new Linear(config.hiddenSize, config.vocabSize, false);
  }

  rowProducts(): RowProduct[] {
    // The embedding table is a product only where it doubles as the output projection.
    return collectRowProducts(this, this.lm_head ? null : this.model.embed_tokens);
  }

  forward(inputs: mx.array, segments: Segment[], logitsFor: LogitsFor): mx.array {
    const h = this.model.forward(inputs, segments, logitsFor);
    return this.lm_head ? this.lm_head.forward(h) : this.model.embed_tokens.asLinear(h);
  }
}
