/**
 * Prefill attention: kvpark's path (scaledDotProductAttention split by KV head over two CPU
 * streams, `attentionOnStreams` in src/model/models/attention.ts) against blocked, flash-style
 * attention built from matmuls: tiles of the keys, exact softmax with a running max and sum,
 * fully masked tiles skipped, the mask added only where a tile reaches past the chunk's first
 * query. Both on the same random queries, keys and values of the qwen2.5-0.5b shape (14 heads,
 * 2 KV heads, head dim 64), one layer, a chunk of queries at the end of a context.
 *
 *   npm run build && node --expose-gc dist/bench/model/attention-blocked.js
 *     [--queries 512] [--contexts 2048,8192] [--tiles 512,2048] [--runs 5]
 *
 * The variants take turns run by run; prints the median ms of each per shape and the largest
 * difference of each blocked result from kvpark's.
 */
import { core as mx } from "@frost-beta/mlx";
import { cpuStreams } from "../../src/model/cpu-streams";
import { attentionOnStreams } from "../../src/model/models/attention";

const HEADS = 14;
const KV_HEADS = 2;
const HEAD_DIM = 64;
const SCALE = 1 / Math.sqrt(HEAD_DIM);

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function collect(): void {
  // MLX memory is released only when its JS wrappers are collected.
  (globalThis as { gc?: () => void }).gc?.();
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Blocked attention of queries [1, heads, T, D] at positions offset .. offset + T - 1 over keys
 * and values [1, kvHeads, S, D], tiles of `tile` keys; mask [T, S] additive.
 */
function blockedAttention(
  queries: mx.array,
  keys: mx.array,
  values: mx.array,
  mask: mx.array,
  offset: number,
  tile: number,
  stream?: mx.Stream,
): mx.array {
  const [, heads, tokens, headDim] = queries.shape;
  const kvHeads = keys.shape[1];
  const group = heads / kvHeads;
  const span = keys.shape[2];
  const q = mx.multiply(queries, SCALE, stream).reshape(1, kvHeads, group * tokens, headDim);
  let max: mx.array | null = null;
  let sum: mx.array | null = null;
  let out: mx.array | null = null;
  for (let start = 0; start < span && start <= offset + tokens - 1; start += tile) {
    const end = Math.min(span, start + tile);
    const range = mx.Slice(start, end);
    const k = keys.index(mx.Slice(), mx.Slice(), range);
    const v = values.index(mx.Slice(), mx.Slice(), range);
    let scores = mx.matmul(q, k.transpose(0, 1, 3, 2), stream);
    if (end - 1 > offset) {
      const masked = mx.add(
        scores.reshape(1, kvHeads, group, tokens, end - start),
        mask.index(mx.Slice(), range),
        stream,
      );
      scores = masked.reshape(1, kvHeads, group * tokens, end - start);
    }
    const tileMax = mx.max(scores, -1, true, stream);
    const newMax: mx.array = max ? mx.maximum(max, tileMax, stream) : tileMax;
    const weights = mx.exp(mx.subtract(scores, newMax, stream), stream);
    const tileSum = mx.sum(weights, -1, true, stream);
    const tileOut = mx.matmul(weights, v, stream);
    if (max && sum && out) {
      const rescale = mx.exp(mx.subtract(max, newMax, stream), stream);
      sum = mx.add(mx.multiply(sum, rescale, stream), tileSum, stream);
      out = mx.add(mx.multiply(out, rescale, stream), tileOut, stream);
    } else {
      sum = tileSum;
      out = tileOut;
    }
    max = newMax;
  }
  return mx.divide(out!, sum!, stream).reshape(1, heads, tokens, headDim);
}

/**
 * Blocked attention whose tiles use MLX's softmax kernel (vectorized on this CPU, where mx.exp is
 * not): a tile's normalized weights w = exp(s - m) / l give its sum back as l = 1 / max(w), since
 * the largest weight is exp(0) / l. Tiles combine as sum_t l_t exp(m_t - M) out_t over
 * sum_t l_t exp(m_t - M), M the largest m_t; exp runs over one value per row and tile only.
 */
function softmaxTiledAttention(
  queries: mx.array,
  keys: mx.array,
  values: mx.array,
  mask: mx.array,
  offset: number,
  tile: number,
  stream?: mx.Stream,
): mx.array {
  const [, heads, tokens, headDim] = queries.shape;
  const kvHeads = keys.shape[1];
  const group = heads / kvHeads;
  const span = keys.shape[2];
  const q = mx.multiply(queries, SCALE, stream).reshape(1, kvHeads, group * tokens, headDim);
  const maxes: mx.array[] = [];
  const sums: mx.array[] = [];
  const outs: mx.array[] = [];
  for (let start = 0; start < span && start <= offset + tokens - 1; start += tile) {
    const end = Math.min(span, start + tile);
    const range = mx.Slice(start, end);
    const k = keys.index(mx.Slice(), mx.Slice(), range);
    const v = values.index(mx.Slice(), mx.Slice(), range);
    let scores = mx.matmul(q, k.transpose(0, 1, 3, 2), stream);
    if (end - 1 > offset) {
      const masked = mx.add(
        scores.reshape(1, kvHeads, group, tokens, end - start),
        mask.index(mx.Slice(), range),
        stream,
      );
      scores = masked.reshape(1, kvHeads, group * tokens, end - start);
    }
    const weights = mx.softmax(scores, -1, true, stream);
    maxes.push(mx.max(scores, -1, true, stream));
    sums.push(mx.reciprocal(mx.max(weights, -1, true, stream), stream));
    outs.push(mx.matmul(weights, v, stream));
  }
  if (outs.length === 1) return outs[0].reshape(1, heads, tokens, headDim);
  const m = mx.stack(maxes, 0, stream);
  const scale = mx.multiply(
    mx.stack(sums, 0, stream),
    mx.exp(mx.subtract(m, mx.max(m, 0, true, stream), stream), stream),
    stream,
  );
  const out = mx.divide(
    mx.sum(mx.multiply(mx.stack(outs, 0, stream), scale, stream), 0, false, stream),
    mx.sum(scale, 0, false, stream),
    stream,
  );
  return out.reshape(1, heads, tokens, headDim);
}

function main(): void {
  const tokens = Number(option("queries", "512"));
  const contexts = option("contexts", "2048,8192").split(",").map(Number);
  const tiles = option("tiles", "512,2048").split(",").map(Number);
  const runs = Number(option("runs", "5"));
  const streams = cpuStreams();
  console.log(`| queries | context | variant | median ms | max abs difference from kvpark's |`);
  console.log(`| ---: | ---: | --- | ---: | ---: |`);
  for (const context of contexts) {
    const offset = context - tokens;
    const key = mx.random.key(context);
    const [kq, kk, kv] = mx.random.split(key, 3);
    const queries = mx.random.normal([1, HEADS, tokens, HEAD_DIM], mx.float32, 0, 1, kq);
    const keys = mx.random.normal([1, KV_HEADS, context, HEAD_DIM], mx.float32, 0, 1, kk);
    const values = mx.random.normal([1, KV_HEADS, context, HEAD_DIM], mx.float32, 0, 1, kv);
    const positions = mx.arange(offset, offset + tokens, 1, mx.int32).reshape(tokens, 1);
    const mask = mx.where(
      mx.lessEqual(mx.arange(0, context, 1, mx.int32).reshape(1, context), positions),
      0,
      -Infinity,
    );
    mx.eval(queries, keys, values, mask);

    const variants: [string, () => mx.array][] = [
      [
        "kvpark (scaledDotProductAttention per KV head on streams)",
        () =>
          streams.length > 1
            ? attentionOnStreams(queries, keys, values, mask, SCALE, streams)
            : mx.fast.scaledDotProductAttention(queries, keys, values, SCALE, mask),
      ],
      ...tiles.map((tile): [string, () => mx.array] => [
        `blocked, ${tile}-key tiles, per KV head on streams`,
        () => {
          if (streams.length < 2) return blockedAttention(queries, keys, values, mask, offset, tile);
          const part = (a: mx.array, n: number, j: number) =>
            a.index(mx.Slice(), mx.Slice(j * n, (j + 1) * n));
          const outs = streams.map((stream, j) =>
            blockedAttention(
              part(queries, HEADS / streams.length, j),
              part(keys, KV_HEADS / streams.length, j),
              part(values, KV_HEADS / streams.length, j),
              mask,
              offset,
              tile,
              stream,
            ),
          );
          return mx.concatenate(outs, 1);
        },
      ]),
      ...tiles.map((tile): [string, () => mx.array] => [
        `blocked with MLX's softmax per tile, ${tile}-key tiles, per KV head on streams`,
        () => {
          if (streams.length < 2) return softmaxTiledAttention(queries, keys, values, mask, offset, tile);
          const part = (a: mx.array, n: number, j: number) =>
            a.index(mx.Slice(), mx.Slice(j * n, (j + 1) * n));
          const outs = streams.map((stream, j) =>
            softmaxTiledAttention(
              part(queries, HEADS / streams.length, j),
              part(keys, KV_HEADS / streams.length, j),
              part(values, KV_HEADS / streams.length, j),
              mask,
              offset,
              tile,
              stream,
            ),
          );
          return mx.concatenate(outs, 1);
        },
      ]),
    ];
    const reference = variants[0][1]();
    mx.eval(reference);
    const differences = variants.map(([, run]) => {
      const d = mx.max(mx.abs(mx.subtract(run(), reference))).item() as number;
      collect();
      return d;
    });
    const times: number[][] = variants.map(() => []);
    for (let r = 0; r < runs; r++) {
      variants.forEach(([, run], i) => {
        const started = performance.now();
        mx.eval(run());
        times[i].push(performance.now() - started);
        collect();
      });
    }
    variants.forEach(([name], i) =>
      console.log(
        `| ${tokens} | ${context} | ${name} | ${median(times[i]).toFixed(0)} | ${differences[i].toExponential(1)} |`,
      ),
    );
  }
}

main();
