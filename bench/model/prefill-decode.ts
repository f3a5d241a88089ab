/**
 * Prefill and decode speed of the MLX forward pass on a model shape (default: the qwen2.5-0.5b
 * preset, generated on first use), at several context lengths.
 *
 *   npm run build && node --expose-gc dist/bench/model/prefill-decode.js [--preset NAME]
 *     [--dir DIR] [--contexts 1024,4096] [--decode-tokens 16] [--chunk-tokens 512] [--out FILE]
 *
 * Prefill: the whole context from an empty cache in chunks of --chunk-tokens, until the last
 * token's logits are evaluated. Decode: greedy single-token steps right after that prefill, so
 * each step attends over the full context. Prints a Markdown table; --out also writes JSON.
 *
 * Where a decode step's time goes, per step (medians): building the lazy graph (the JS side of
 * `forward`), evaluating it, and sampling (argmax over the vocabulary, a token id back in JS). And
 * once per context, the model's own weight matrices multiplied by one row each, all in one graph: the
 * weight reads alone, as fast as this MLX build reads them. A step's evaluation minus that is what
 * attention over the cache, norms, rope and the residual adds cost on top of the weight reads.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { type LoadedModel, loadModel } from "../../src/model/loader";
import { Sampler } from "../../src/model/sampler";

interface Result {
  contextTokens: number;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  decodeMsPerToken: number;
  decodeTokensPerSecond: number;
  /** Median per decode step: building the lazy graph (JS), evaluating it, sampling. */
  decodeBuildMs: number;
  decodeEvalMs: number;
  decodeSampleMs: number;
  /** Every weight matrix times one row in one graph (median of runs): the weight reads alone. */
  weightProductsMs: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Time to multiply every weight matrix of the model by one row, all in one evaluated graph, the
 * way a decode step reads them (the tied embedding included, as the output projection). Median of
 * `runs` after one warm-up.
 */
async function weightProductsMs(model: LoadedModel, runs: number): Promise<number> {
  const params = model.model.namedParameters();
  // An untied embedding table is only indexed (one row per token), not read in full.
  const tied = !params.some(([name]) => name === "lm_head.weight");
  const matrices = params
    .filter(([name, w]) => w.ndim === 2 && (tied || name !== "model.embed_tokens.weight"))
    .map(([, w]) => w);
  const rows = new Map<number, mx.array>();
  for (const w of matrices) {
    const k = w.shape[1];
    if (!rows.has(k)) rows.set(k, mx.random.normal([1, k], mx.float32, 0, 1, mx.random.key(k)));
  }
  mx.eval(...rows.values());
  const once = (): number => {
    const started = performance.now();
    mx.eval(...matrices.map((w) => mx.matmul(rows.get(w.shape[1])!, w.T)));
    return performance.now() - started;
  };
  once();
  const times: number[] = [];
  for (let r = 0; r < runs; r++) {
    times.push(once());
    await collect();
  }
  return median(times);
}

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

/**
 * MLX memory is released only when its JS wrappers are collected, and their finalizers run once the
 * event loop turns (as between the engine's steps): a loop that never yields keeps every chunk's
 * temporaries, and each chunk then writes to fresh pages.
 */
async function collect(): Promise<void> {
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setImmediate(resolve));
}

async function main(): Promise<void> {
  const preset = option("preset", "qwen2.5-0.5b");
  const dir = option("dir", path.join(".kvpark", "models", preset));
  const contexts = option("contexts", "1024,4096").split(",").map(Number);
  const decodeTokens = Number(option("decode-tokens", "16"));
  const chunkTokens = Number(option("chunk-tokens", "512"));
  const out = option("out", "");

  if (!fs.existsSync(path.join(dir, "config.json"))) {
    const started = performance.now();
    await writeRandomCheckpoint(dir, { preset, seed: 0 });
    console.error(`generated ${preset} in ${dir} in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }
  const loadStarted = performance.now();
  const model = await loadModel(dir, { prefillChunkTokens: chunkTokens });
  console.error(`loaded ${dir} in ${((performance.now() - loadStarted) / 1000).toFixed(1)} s`);
  const vocab = model.config.vocabSize;

  // Warm-up: first calls pay one-time allocation costs.
  mx.eval(model.forward([1, 2, 3, 4], model.newCache()));
  await collect();

  const results: Result[] = [];
  for (const contextTokens of contexts) {
    const tokens = Array.from({ length: contextTokens }, (_, i) => (i * 7919 + 17) % Math.min(vocab, 8000));
    const cache = model.newCache(contextTokens + decodeTokens);
    const sampler = new Sampler();
    const prefillStarted = performance.now();
    // Chunk by chunk as forward() splits them, collecting between chunks: the wrappers of one
    // chunk's temporaries would otherwise hold gigabytes until V8 happened to collect them.
    for (let start = 0; start + chunkTokens < tokens.length; start += chunkTokens) {
      model.forward(tokens.slice(start, start + chunkTokens), cache);
      model.materialize(cache);
      await collect();
    }
    const lastChunk = tokens.slice(Math.floor((tokens.length - 1) / chunkTokens) * chunkTokens);
    let next = sampler.sample(model.forward(lastChunk, cache));
    const prefillSeconds = (performance.now() - prefillStarted) / 1000;
    await collect();

    const build: number[] = [];
    const evaluate: number[] = [];
    const sample: number[] = [];
    // Each step's build, evaluation and sampling; the collection after it, as the engine does
    // between steps, is not timed.
    for (let i = 0; i < decodeTokens; i++) {
      const t0 = performance.now();
      const logits = model.forward([next], cache);
      const t1 = performance.now();
      mx.eval(logits);
      const t2 = performance.now();
      next = sampler.sample(logits);
      build.push(t1 - t0);
      evaluate.push(t2 - t1);
      sample.push(performance.now() - t2);
      await collect();
    }
    const decodeMsPerToken =
      build.reduce((sum, ms, i) => sum + ms + evaluate[i] + sample[i], 0) / decodeTokens;

    const result = {
      contextTokens,
      prefillSeconds,
      prefillTokensPerSecond: contextTokens / prefillSeconds,
      decodeMsPerToken,
      decodeTokensPerSecond: 1000 / decodeMsPerToken,
      decodeBuildMs: median(build),
      decodeEvalMs: median(evaluate),
      decodeSampleMs: median(sample),
      weightProductsMs: await weightProductsMs(model, 5),
    };
    results.push(result);
    console.error(JSON.stringify(result));
  }

  console.log(
    `| model | context | prefill tok/s | prefill s | decode tok/s | decode ms/token | build | eval | sample | weight products alone |`,
  );
  console.log(`| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |`);
  for (const r of results) {
    console.log(
      `| ${preset} | ${r.contextTokens} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.prefillSeconds.toFixed(2)} | ` +
        `${r.decodeTokensPerSecond.toFixed(2)} | ${r.decodeMsPerToken.toFixed(0)} | ${r.decodeBuildMs.toFixed(1)} | ` +
        `${r.decodeEvalMs.toFixed(1)} | ${r.decodeSampleMs.toFixed(1)} | ${r.weightProductsMs.toFixed(1)} |`,
    );
  }
  if (out)
    fs.writeFileSync(out, JSON.stringify({ preset, chunkTokens, decodeTokens, results }, null, 2) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
