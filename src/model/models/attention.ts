import { core as mx } from "@frost-beta/mlx";
import type { Llama3RopeScaling, ModelConfig } from "../config";
import type { LayerSegment } from "./base";
import { cpuStreams } from "../cpu-streams";

/**
 * Rotary position embedding and attention over each sequence's own cache: the causal mask, the
 * compiled attention and the kernels it picks by shape, and the head reshapes around them.
 */

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
      const streams = cpuStreams();
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
