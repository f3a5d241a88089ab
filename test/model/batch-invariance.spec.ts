import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { rowBuckets } from "../../src/model/batch-rows";
import type { ModelCache } from "../../src/model/model-cache";
import { type LoadedModel, loadModel } from "../../src/model/loader";
import { removeTempDirs, tempDir } from "./helpers";

/**
 * A decode batch gives each sequence the logits it gets alone, to the bit: the products run at row
 * counts calibrated per machine (src/model/batch-rows.ts), attention runs per sequence.
 *
 * The widths are Qwen2.5-0.5B's (hidden 896, 14 heads over 2 KV heads of 64, MLP 4864), where this
 * CPU's BLAS is known to sum differently by row count; two layers and a small vocabulary keep it quick.
 */
const SHAPED = {
  hidden_size: 896,
  intermediate_size: 4864,
  num_hidden_layers: 2,
  num_attention_heads: 14,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 4096,
  rope_theta: 1000000,
};

const CASES = [
  {
    name: "qwen2 (q/k/v biases, tied embeddings)",
    config: { model_type: "qwen2", tie_word_embeddings: true },
  },
  { name: "llama (no biases, separate head)", config: { model_type: "llama", tie_word_embeddings: false } },
];

const VOCAB = 1024;
const DECODE_STEPS = 4;
/** Prompt lengths of the eight sequences: mixed, and across a cache growth step (256). */
const LENGTHS = [3, 17, 64, 100, 130, 255, 257, 300];

function prompt(i: number): number[] {
  return Array.from({ length: LENGTHS[i] }, (_, j) => (j * 131 + i * 977 + 7) % VOCAB);
}

/** The i-th token fed at each decode step (teacher forcing keeps runs comparable). */
function fed(i: number, step: number): number {
  return (i * 313 + step * 59 + 1) % VOCAB;
}

function prefilled(model: LoadedModel, i: number): ModelCache {
  const cache = model.newCache();
  model.forward(prompt(i), cache);
  model.materialize(cache);
  return cache;
}

/** Logits rows [DECODE_STEPS] of sequence i decoded alone, one forward per token. */
function alone(model: LoadedModel, i: number): Float32Array[] {
  const cache = prefilled(model, i);
  const out: Float32Array[] = [];
  for (let step = 0; step < DECODE_STEPS; step++) {
    const logits = model.forward([fed(i, step)], cache);
    mx.eval(logits);
    out.push(Float32Array.from(logits.flatten().tolist() as number[]));
  }
  return out;
}

/** Logits of the members decoded together, [member][step]. */
function together(model: LoadedModel, members: number[]): Float32Array[][] {
  const caches = members.map((i) => prefilled(model, i));
  const out: Float32Array[][] = members.map(() => []);
  for (let step = 0; step < DECODE_STEPS; step++) {
    const logits = model.decodeBatch(
      members.map((i) => fed(i, step)),
      caches,
    );
    mx.eval(logits);
    const rows = logits.tolist() as number[][];
    rows.forEach((row, m) => out[m].push(Float32Array.from(row)));
  }
  return out;
}

function differingValues(a: Float32Array, b: Float32Array): number {
  let n = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) n++;
  return n;
}

afterAll(removeTempDirs);

describe.each(CASES)("$name", ({ config }) => {
  let model: LoadedModel;
  const reference = new Map<number, Float32Array[]>();

  beforeAll(async () => {
    const dir = tempDir();
    await writeRandomCheckpoint(dir, {
      config: { ...SHAPED, ...config },
      seed: 3,
      tokenizerVocabSize: VOCAB,
    });
    model = await loadModel(dir, { prefillChunkTokens: 128 });
    const calibration = model.calibrateBatchRows(8);
    // Every product was measured, and the largest batch is always trusted.
    for (const c of calibration) expect(c.trusted[c.trusted.length - 1]).toBe(8);
    for (let i = 0; i < LENGTHS.length; i++) reference.set(i, alone(model, i));
  }, 120_000);

  test.each([[[5]], [[0, 7]], [[1, 3, 4, 6]], [[0, 1, 2, 3, 4, 5, 6, 7]], [[7, 2, 5]]])(
    "members %j decoded together get the logits they get alone, to the bit",
    (members) => {
      const got = together(model, members);
      members.forEach((i, m) => {
        for (let step = 0; step < DECODE_STEPS; step++) {
          expect(differingValues(got[m][step], reference.get(i)![step])).toBe(0);
        }
      });
    },
  );

  test("row counts beyond the calibrated batch run unpadded, and buckets are powers of two", () => {
    expect(rowBuckets(8)).toEqual([1, 2, 4, 8]);
    expect(rowBuckets(9)).toEqual([1, 2, 4, 8, 16]);
    expect(rowBuckets(1)).toEqual([1]);
  });
});
