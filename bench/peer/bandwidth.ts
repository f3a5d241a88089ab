/**
 * Memory read bandwidth, measured the way a decode step reads weights: float32 matrix-vector
 * products with MLX over ≥ 1 GiB, once as one square matrix and once as matrices of a Qwen2.5-0.5B
 * MLP's shape ([4864, 896], x @ W.T like a linear layer) evaluated as one graph like a forward pass;
 * and for comparison plain reads of as many bytes (MLX's sum over the square matrix, and memcmp of
 * two Node buffers).
 *
 *   node --expose-gc dist/bench/peer/bandwidth.js [--gib 1] [--runs 5] [--out FILE]
 *
 * Runs in its own process so MLX's memory goes away with it. Reports the best run of each (the
 * floor is what the hardware can do; slower runs measure other work on the machine).
 */
import * as fs from "node:fs";
import { core as mx } from "@frost-beta/mlx";

/** Bytes per second of each way of reading, best of `runs`. */
export interface BandwidthResult {
  bytes: number;
  runs: number;
  /** MLX float32 matmul of a [n, n] matrix by a [n, 1] vector: the matrix's bytes over the time. */
  gemvBytesPerSecond: number;
  /** MLX x @ W.T over enough [4864, 896] float32 matrices for the same bytes, one eval for all. */
  layerGemvBytesPerSecond: number;
  layerGemvBytes: number;
  /** MLX sum over the same matrix. */
  sumBytesPerSecond: number;
  /** Buffer.equals (memcmp) of two buffers of half the bytes each. */
  memcmpBytesPerSecond: number;
  gemvSamplesMs: number[];
  layerGemvSamplesMs: number[];
  sumSamplesMs: number[];
  memcmpSamplesMs: number[];
}

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function timeMs(f: () => void): number {
  const t = performance.now();
  f();
  return performance.now() - t;
}

function main(): void {
  const gib = Number(option("gib", "1"));
  const runs = Number(option("runs", "5"));
  const out = option("out", "");
  const n = Math.round(Math.sqrt((gib * 2 ** 30) / 4));
  const bytes = n * n * 4;

  const a = mx.random.uniform(-1, 1, [n, n], mx.float32);
  const x = mx.random.uniform(-1, 1, [n, 1], mx.float32);
  mx.eval(a, x);
  // Warm-up: the first product pays one-time costs (thread pool, BLAS setup).
  mx.eval(mx.matmul(a, x));
  const layerShape = [4864, 896];
  const layerCount = Math.ceil(bytes / (layerShape[0] * layerShape[1] * 4));
  const layers = Array.from({ length: layerCount }, () => mx.random.uniform(-1, 1, layerShape, mx.float32));
  const xRow = mx.random.uniform(-1, 1, [1, layerShape[1]], mx.float32);
  mx.eval(...layers, xRow);
  const layerProducts = () => mx.eval(...layers.map((w) => mx.matmul(xRow, w.T)));
  layerProducts();
  const layerGemv: number[] = [];
  const gemv: number[] = [];
  const sum: number[] = [];
  for (let i = 0; i < runs; i++) {
    gemv.push(timeMs(() => mx.eval(mx.matmul(a, x))));
    sum.push(timeMs(() => mx.eval(mx.sum(a))));
    layerGemv.push(timeMs(layerProducts));
  }

  const half = Math.floor(bytes / 2);
  const b1 = Buffer.alloc(half, 1);
  const b2 = Buffer.alloc(half, 1);
  b1.equals(b2);
  const memcmp: number[] = [];
  for (let i = 0; i < runs; i++) memcmp.push(timeMs(() => b1.equals(b2)));

  const rate = (samples: number[], b: number) => b / (Math.min(...samples) / 1000);
  const result: BandwidthResult = {
    bytes,
    runs,
    gemvBytesPerSecond: rate(gemv, bytes),
    layerGemvBytesPerSecond: rate(layerGemv, layerCount * layerShape[0] * layerShape[1] * 4),
    layerGemvBytes: layerCount * layerShape[0] * layerShape[1] * 4,
    sumBytesPerSecond: rate(sum, bytes),
    memcmpBytesPerSecond: rate(memcmp, 2 * half),
    gemvSamplesMs: gemv.map((v) => Math.round(v * 10) / 10),
    layerGemvSamplesMs: layerGemv.map((v) => Math.round(v * 10) / 10),
    sumSamplesMs: sum.map((v) => Math.round(v * 10) / 10),
    memcmpSamplesMs: memcmp.map((v) => Math.round(v * 10) / 10),
  };
  const json = JSON.stringify(result, null, 2) + "\n";
  if (out) fs.writeFileSync(out, json);
  else process.stdout.write(json);
}

main();
