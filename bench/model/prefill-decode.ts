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
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { loadModel } from "../../src/model/loader";
import { Sampler } from "../../src/model/sampler";

interface Result {
  contextTokens: number;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  decodeMsPerToken: number;
  decodeTokensPerSecond: number;
}

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

function collect(): void {
  // MLX memory is released only when its JS wrappers are collected.
  (globalThis as { gc?: () => void }).gc?.();
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
  collect();

  const results: Result[] = [];
  for (const contextTokens of contexts) {
    const tokens = Array.from({ length: contextTokens }, (_, i) => (i * 7919 + 17) % Math.min(vocab, 8000));
    const cache = model.newCache(contextTokens + decodeTokens);
    const sampler = new Sampler();
    const prefillStarted = performance.now();
    let next = sampler.sample(model.forward(tokens, cache));
    const prefillSeconds = (performance.now() - prefillStarted) / 1000;
    collect();

    const decodeStarted = performance.now();
    for (let i = 0; i < decodeTokens; i++) next = sampler.sample(model.forward([next], cache));
    const decodeMsPerToken = (performance.now() - decodeStarted) / decodeTokens;
    collect();

    const result = {
      contextTokens,
      prefillSeconds,
      prefillTokensPerSecond: contextTokens / prefillSeconds,
      decodeMsPerToken,
      decodeTokensPerSecond: 1000 / decodeMsPerToken,
    };
    results.push(result);
    console.error(JSON.stringify(result));
  }

  console.log(`| model | context | prefill tok/s | prefill s | decode tok/s | decode ms/token |`);
  console.log(`| --- | ---: | ---: | ---: | ---: | ---: |`);
  for (const r of results) {
    console.log(
      `| ${preset} | ${r.contextTokens} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.prefillSeconds.toFixed(2)} | ` +
        `${r.decodeTokensPerSecond.toFixed(2)} | ${r.decodeMsPerToken.toFixed(0)} |`,
    );
  }
  if (out)
    fs.writeFileSync(out, JSON.stringify({ preset, chunkTokens, decodeTokens, results }, null, 2) + "\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
