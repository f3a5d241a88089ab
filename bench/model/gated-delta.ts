/**
 * The gated delta rule's two forms (src/model/models/gated-delta.ts): token by token (step) and
 * chunked (WY), in paired, alternating runs, medians.
 *
 *   npm run build && node --expose-gc dist/bench/model/gated-delta.js [--preset qwen3.5-0.8b]
 *     [--dir DIR] [--contexts 512,2048] [--runs 3] [--chunk-tokens 128] [--segments 1,2,4,8,16,32,64]
 *     [--segment-runs 9] [--decode-tokens 4] [--forms step,chunked] [--out FILE]
 *
 * Crossover: the rule alone on one layer's shape from the preset (its value heads and head dims),
 * one segment of each length from a carried state, until its output and state are evaluated.
 * Prefill: the model's whole prefill of each context from an empty cache, in chunks of
 * --chunk-tokens as forward() splits them, until the last token's logits are evaluated; then
 * --decode-tokens single-token steps in the same form (median ms per step). --forms chunked runs the
 * whole-model prefill in the chunked form only (the step form holds every token's state until its
 * chunk ends: gigabytes at long chunks).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { loadModel } from "../../src/model/loader";
import {
  DELTA_CHUNK_TOKENS,
  chunkedDeltaRule,
  deltaRuleForm,
  steppedDeltaRule,
} from "../../src/model/models/gated-delta";

type Form = "step" | "chunked";

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

/**
 * MLX memory is released only when its JS wrappers are collected, and their finalizers run once the
 * event loop turns: a loop that never yields keeps every chunk's temporaries (gigabytes).
 */
async function collect(): Promise<void> {
  (globalThis as { gc?: () => void }).gc?.();
  await new Promise((resolve) => setImmediate(resolve));
}

/** Alternates the order of the two forms run by run, so drift in machine load hits both alike. */
async function paired(
  runs: number,
  once: (form: Form) => number | Promise<number>,
  forms: Form[] = ["step", "chunked"],
): Promise<Record<Form, number[]>> {
  const times: Record<Form, number[]> = { step: [], chunked: [] };
  for (let r = 0; r < runs; r++) {
    const order = r % 2 ? [...forms].reverse() : forms;
    for (const form of order) {
      times[form].push(await once(form));
      await collect();
    }
  }
  return times;
}

async function main(): Promise<void> {
  const preset = option("preset", "qwen3.5-0.8b");
  const dir = option("dir", path.join(".kvpark", "models", preset));
  const contexts = option("contexts", "512,2048").split(",").filter(Boolean).map(Number);
  const runs = Number(option("runs", "3"));
  const chunkTokens = Number(option("chunk-tokens", "128"));
  const segments = option("segments", "1,2,4,8,16,32,64").split(",").filter(Boolean).map(Number);
  const segmentRuns = Number(option("segment-runs", "9"));
  const decodeTokens = Number(option("decode-tokens", "4"));
  const out = option("out", "");
  const forms = option("forms", "step,chunked").split(",").filter(Boolean) as Form[];
  if (forms.some((f) => f !== "step" && f !== "chunked"))
    throw new Error("--forms takes step and/or chunked");

  if (!fs.existsSync(path.join(dir, "config.json"))) await writeRandomCheckpoint(dir, { preset, seed: 0 });
  const model = await loadModel(dir, { prefillChunkTokens: chunkTokens });
  const shape = model.config.linearAttention;
  if (!shape) throw new Error(`${preset} has no Gated DeltaNet layers`);
  const { numValueHeads: H, keyHeadDim: dk, valueHeadDim: dv } = shape;

  // Crossover: the rule alone, one layer, one segment.
  const crossover: { tokens: number; stepMs: number; chunkedMs: number }[] = [];
  const S0 = mx.random.normal([1, H, dv, dk], mx.float32, 0, 0.1, mx.random.key(1));
  for (const tokens of segments) {
    const key = (i: number) => mx.random.key(tokens * 10 + i);
    const unit = (x: mx.array) => mx.multiply(x, mx.rsqrt(mx.sum(mx.square(x), -1, true)));
    const x = {
      q: mx.multiply(unit(mx.random.normal([1, tokens, H, dk], mx.float32, 0, 1, key(1))), 1 / Math.sqrt(dk)),
      k: unit(mx.random.normal([1, tokens, H, dk], mx.float32, 0, 1, key(2))),
      v: mx.random.normal([1, tokens, H, dv], mx.float32, 0, 1, key(3)),
      logDecay: mx.negative(mx.logaddexp(mx.random.normal([1, tokens, H], mx.float32, 0, 1, key(4)), 0)),
      beta: mx.sigmoid(mx.random.normal([1, tokens, H], mx.float32, 0, 1, key(5))),
    };
    mx.eval(S0, ...Object.values(x));
    const none = () => false;
    const once = (form: Form): number => {
      const started = performance.now();
      const [y, S] =
        form === "step"
          ? steppedDeltaRule(x, S0, 0, none, () => {})
          : chunkedDeltaRule(x, S0, 0, DELTA_CHUNK_TOKENS, none, () => {});
      mx.eval(y, S);
      return performance.now() - started;
    };
    once("step");
    once("chunked");
    const times = await paired(segmentRuns, once);
    const row = { tokens, stepMs: median(times.step), chunkedMs: median(times.chunked) };
    crossover.push(row);
    console.error(JSON.stringify(row));
  }

  // Prefill of the whole model, each context from an empty cache.
  const vocab = model.config.vocabSize;
  mx.eval(model.forward([1, 2, 3, 4], model.newCache()));
  await collect();
  const prefill: {
    contextTokens: number;
    step: number[];
    chunked: number[];
    decodeMs: Record<Form, number[]>;
  }[] = [];
  for (const contextTokens of contexts) {
    const tokens = Array.from({ length: contextTokens }, (_, i) => (i * 7919 + 17) % Math.min(vocab, 8000));
    const decodeMs: Record<Form, number[]> = { step: [], chunked: [] };
    const once = async (form: Form): Promise<number> => {
      deltaRuleForm.mode = form;
      const cache = model.newCache(contextTokens + decodeTokens);
      const started = performance.now();
      for (let start = 0; start + chunkTokens < tokens.length; start += chunkTokens) {
        model.forward(tokens.slice(start, start + chunkTokens), cache);
        model.materialize(cache);
        await collect();
      }
      const lastChunk = tokens.slice(Math.floor((tokens.length - 1) / chunkTokens) * chunkTokens);
      mx.eval(model.forward(lastChunk, cache));
      const seconds = (performance.now() - started) / 1000;
      // Decode steps right after, in the same form (a fixed token: the sampler is not timed).
      const steps: number[] = [];
      for (let i = 0; i < decodeTokens; i++) {
        const t0 = performance.now();
        mx.eval(model.forward([17 + i], cache));
        steps.push(performance.now() - t0);
      }
      decodeMs[form].push(median(steps));
      deltaRuleForm.mode = "auto";
      return contextTokens / seconds;
    };
    const rates = await paired(runs, once, forms);
    prefill.push({ contextTokens, ...rates, decodeMs });
    console.error(JSON.stringify({ contextTokens, ...rates, decodeMs }));
  }

  console.log(`| segment tokens | step ms | chunked ms | chunked / step |`);
  console.log(`| ---: | ---: | ---: | ---: |`);
  for (const r of crossover)
    console.log(
      `| ${r.tokens} | ${r.stepMs.toFixed(2)} | ${r.chunkedMs.toFixed(2)} | ${(r.chunkedMs / r.stepMs).toFixed(2)} |`,
    );
  console.log();
  console.log(
    `| model | context | step prefill tok/s | chunked prefill tok/s | speed-up | step decode ms | chunked decode ms |`,
  );
  console.log(`| --- | ---: | ---: | ---: | ---: | ---: | ---: |`);
  const cell = (values: number[], digits: number) =>
    values.length ? median(values).toFixed(digits) : "not run";
  for (const p of prefill) {
    const ratio =
      p.step.length && p.chunked.length ? `${(median(p.chunked) / median(p.step)).toFixed(1)}x` : "";
    console.log(
      `| ${preset} | ${p.contextTokens} | ${cell(p.step, 1)} | ${cell(p.chunked, 1)} | ${ratio} | ` +
        `${cell(p.decodeMs.step, 0)} | ${cell(p.decodeMs.chunked, 0)} |`,
    );
  }
  if (out)
    fs.writeFileSync(
      out,
      JSON.stringify(
        { preset, chunkTokens, forms, deltaChunkTokens: DELTA_CHUNK_TOKENS, crossover, prefill },
        null,
        2,
      ) + "\n",
    );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
