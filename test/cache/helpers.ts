import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { scriptsIn, transpileWithImports } from "../helpers/transpile";
import { parseSegment, segmentFiles } from "../store/helpers";
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache, type CacheOptions, type CacheSeams, type RestoreReport } from "../../src/cache";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { ARCHITECTURE_CASES, TINY } from "../model/architectures";
import { type LoadedModel, type ModelCache, loadModel } from "../../src/model/loader";

const dirs: string[] = [];

/** A fresh directory under the OS temp dir, removed by removeTempDirs(). */
export function tempDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvpark-cache-${label}-`));
  dirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
}

const models = new Map<string, Promise<LoadedModel>>();

/** The tiny preset (2 layers, 2 KV heads, head_dim 16) with random weights, loaded once per seed. */
export function tinyModel(seed = 11): Promise<LoadedModel> {
  const key = `tiny-${seed}`;
  let model = models.get(key);
  if (!model) {
    model = (async () => {
      const dir = tempDir("model");
      await writeRandomCheckpoint(dir, { preset: "tiny", seed });
      return loadModel(dir);
    })();
    models.set(key, model);
  }
  return model;
}

/**
 * A tiny random model of a hybrid architecture, loaded once per kind and seed: "qwen3_5" (Gated
 * DeltaNet, attention, DeltaNet, attention) or "gemma3_text" (local, global, local with a window
 * of `window` tokens), shaped as in test/model/architectures.ts.
 */
export function hybridModel(kind: "qwen3_5" | "gemma3_text", seed = 11, window = 12): Promise<LoadedModel> {
  const key = `${kind}-${seed}-${window}`;
  let model = models.get(key);
  if (!model) {
    const config = {
      ...TINY,
      ...ARCHITECTURE_CASES.find((c) => c.config.model_type === kind)!.config,
      ...(kind === "gemma3_text" ? { sliding_window: window } : {}),
    };
    model = (async () => {
      const dir = tempDir("model");
      await writeRandomCheckpoint(dir, { config, seed, tokenizerVocabSize: 512 });
      return loadModel(dir);
    })();
    models.set(key, model);
  }
  return model;
}

/** Deterministic pseudo-random token ids in [1, vocab) from a seed (mulberry32). */
export function randomTokens(seed: number, count: number, vocab: number): number[] {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: count }, () => 1 + Math.floor(next() * (vocab - 1)));
}

/** Logits of a prompt's last token and the greedy continuation. */
export interface Completion {
  logits: Float32Array;
  tokens: number[];
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

export function toFloat32(logits: mx.array): Float32Array {
  return Float32Array.from(logits.reshape([-1]).tolist() as number[]);
}

/** Greedy decoding of `steps` tokens after a prompt whose KV up to cache.offset is in `cache`. */
function decode(model: LoadedModel, cache: ModelCache, prompt: number[], steps: number): Completion {
  const logits = toFloat32(model.forward(prompt.slice(cache.offset), cache));
  const tokens = [argmax(logits)];
  while (tokens.length < steps) {
    tokens.push(argmax(toFloat32(model.forward([tokens[tokens.length - 1]], cache))));
  }
  return { logits, tokens };
}

/** The reference: the prompt computed from scratch, no cache. */
export function fromScratch(model: LoadedModel, prompt: number[], steps = 4): Completion {
  return decode(model, model.newCache(prompt.length + steps), prompt, steps);
}

/** A Generate request as the engine runs it with the prefix cache: lookup, restore, prefill, decode, persist. */
export async function generate(
  cache: PrefixCache,
  model: LoadedModel,
  tenant: string,
  prompt: number[],
  steps = 4,
  persist = true,
): Promise<Completion & { report: RestoreReport; sequence: ModelCache }> {
  const match = cache.lookup(tenant, prompt, { tokensMax: prompt.length - 1 });
  const sequence = model.newCache(prompt.length + steps);
  // Recurrent layers keep their state at block boundaries, as the engine's sequences do.
  if (persist) sequence.captureSnapshots(cache.blockTokens);
  const report = await cache.restore(match, sequence);
  expect(sequence.offset).toBe(report.restoredTokens);
  const completion = decode(model, sequence, prompt, steps);
  // The last generated token was sampled but never run, so its KV is not in the sequence.
  cache.persist(tenant, [...prompt, ...completion.tokens], sequence, { persist });
  return { ...completion, report, sequence };
}

/** A sequence holding the KV of `tokens`, computed from scratch. */
export function prefill(model: LoadedModel, tokens: number[]): ModelCache {
  const sequence = model.newCache(tokens.length);
  model.forward(tokens, sequence);
  model.materialize(sequence);
  return sequence;
}

/** Largest |a - b|. */
export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Asserts a cached run produced what the uncached reference does. */
export function expectSameAsScratch(model: LoadedModel, prompt: number[], got: Completion): void {
  const want = fromScratch(model, prompt, got.tokens.length);
  expect(got.tokens).toEqual(want.tokens);
  expect(maxAbsDiff(got.logits, want.logits)).toBeLessThanOrEqual(1e-4);
}

/**
 * Caches a suite opens, closed after each of its tests: `track` an opening, `close` one the test
 * closes itself. Call at the top of a describe block or file.
 */
export function trackCaches() {
  const open: PrefixCache[] = [];
  afterEach(async () => {
    for (const cache of open.splice(0)) await cache.close();
  });
  return {
    async track(opening: Promise<PrefixCache>): Promise<PrefixCache> {
      const cache = await opening;
      open.push(cache);
      return cache;
    },
    async close(cache: PrefixCache): Promise<void> {
      open.splice(open.indexOf(cache), 1);
      await cache.close();
    },
  };
}

/** The cache's log lines of the caches openCache opened without a log of their own, oldest first. */
export const logLines: string[] = [];

/**
 * Opens a prefix cache for a model with test-friendly limits; options override them. Its log
 * goes to logLines unless `seams` give it another.
 */
export function openCache(
  model: LoadedModel,
  options: Partial<CacheOptions> = {},
  seams: CacheSeams = {},
): Promise<PrefixCache> {
  return PrefixCache.open(
    model,
    {
      blockTokens: 8,
      ssdFsync: "none",
      ssdSegmentBytes: 1024 * 1024,
      ssdBytesMax: 64 * 1024 * 1024,
      costModel: false,
      stagingDir: path.join(tempDir("staging"), "s"),
      ...options,
    },
    { log: (line) => logLines.push(line), ...seams },
  );
}

const ROOT = path.resolve(__dirname, "..", "..");

/**
 * Child processes cannot load TypeScript: transpiles the child scripts and every module they reach
 * by relative import into outDir with the same layout, and returns the path of child script `name`.
 */
export function transpileForChild(outDir: string, name: string): string {
  transpileWithImports(outDir, scriptsIn(path.join("test", "cache", "children")));
  return path.join(outDir, "test", "cache", "children", `${name}.js`);
}

/** Environment for a transpiled child: packages from the repository, the built store addon. */
export function childEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    NODE_PATH: path.join(ROOT, "node_modules"),
    KVPARK_STORE_ADDON: path.join(ROOT, "native", "build", "Release", "kvpark_store.node"),
  };
}

/** The store's record of a block key: segment file and offset of its record header. */
export function findRecord(
  ssdDir: string,
  key: Buffer,
): { file: string; offset: number; payloadBytes: number } {
  for (const file of segmentFiles(path.join(ssdDir, "blocks"))) {
    const record = parseSegment(file).find((r) => r.key.equals(key) && r.kind === 1);
    if (record) return record;
  }
  throw new Error("record not found");
}

/** Flips one byte of a stored block's payload, `at` bytes into it. */
export function damageRecord(ssdDir: string, key: Buffer, at = 1000): void {
  const record = findRecord(ssdDir, key);
  const fd = fs.openSync(record.file, "r+");
  const byte = Buffer.alloc(1);
  fs.readSync(fd, byte, 0, 1, record.offset + 64 + at);
  byte[0] ^= 0x5a;
  fs.writeSync(fd, byte, 0, 1, record.offset + 64 + at);
  fs.closeSync(fd);
}
