import { core as mx } from "@frost-beta/mlx";
import { writeRandomCheckpoint } from "../../src/model-gen/checkpoint";
import { type LayerKV } from "../../src/model/kv-cache";
import { ModelCache } from "../../src/model/model-cache";
import { type LoadedModel, loadModel } from "../../src/model/loader";
import { referenceForward } from "./reference";
import { ARCHITECTURE_CASES, TINY } from "./architectures";
import { maxAbsDiff, referenceWeights, removeTempDirs, rows, tempDir } from "./helpers";

/** Token ids of the test sequence: longer than the sliding window, spread over the vocabulary. */
const TOKENS = Array.from({ length: 16 }, (_, i) => (i * 97 + 13) % 517);
const TOLERANCE = 1e-4;

afterAll(removeTempDirs);

describe.each(ARCHITECTURE_CASES)("$name", ({ config }) => {
  let dir: string;
  let model: LoadedModel;
  let full: mx.array;

  beforeAll(async () => {
    dir = tempDir();
    await writeRandomCheckpoint(dir, { config: { ...TINY, ...config }, seed: 1, tokenizerVocabSize: 512 });
    model = await loadModel(dir);
    full = model.forward(TOKENS, model.newCache(), { logits: "all" });
    mx.eval(full);
  });

  test("output shapes and dtypes", () => {
    expect(full.shape).toEqual([TOKENS.length, 517]);
    expect(full.dtype).toBe(mx.float32);
    const cache = model.newCache();
    const last = model.forward(TOKENS, cache);
    expect(last.shape).toEqual([1, 517]);
    expect(last.dtype).toBe(mx.float32);
    expect(cache.offset).toBe(TOKENS.length);
    expect(cache.capacity).toBe(256);
    // The first layer that holds keys and values (qwen3_5's first layer is recurrent).
    const [keys] = cache.layers[cache.recurrent.indexOf(null)].state();
    expect(keys.shape).toEqual([1, 2, 256, model.headDim]);
    for (const [, weight] of model.model.namedParameters()) expect(weight.dtype).toBe(mx.float32);
    // Logits of a random model are spread, not constant.
    expect(mx.std(full).item() as number).toBeGreaterThan(0.05);
  });

  test("chunked prefill and incremental decode equal the full forward", () => {
    // A 4-token growth step makes the cache grow (and keep stale tail positions) during the run.
    const cache = new ModelCache(model.numLayers, model.kvHeads, model.headDim, 4, model.recurrentLayers);
    const parts = [
      model.forward(TOKENS.slice(0, 5), cache, { logits: "all" }),
      model.forward(TOKENS.slice(5, 11), cache, { logits: "all" }),
      ...TOKENS.slice(11).map((t) => model.forward([t], cache, { logits: "all" })),
    ];
    expect(cache.offset).toBe(TOKENS.length);
    expect(cache.capacity).toBe(16);
    expect(maxAbsDiff(mx.concatenate(parts, 0), full)).toBeLessThan(TOLERANCE);
  });

  test("a preallocated cache gives the same logits", () => {
    // Capacity 1024: attention reads the first 256 positions, not the whole buffer.
    const cache = model.newCache(1000);
    expect(cache.capacity).toBe(1024);
    const prefill = model.forward(TOKENS.slice(0, 9), cache, { logits: "all" });
    const decode = TOKENS.slice(9).map((t) => model.forward([t], cache, { logits: "all" }));
    expect(maxAbsDiff(mx.concatenate([prefill, ...decode], 0), full)).toBeLessThan(TOLERANCE);
  });

  test("forward splits long inputs into prefill chunks", async () => {
    const chunked = await loadModel(dir, { prefillChunkTokens: 5 });
    expect(maxAbsDiff(chunked.forward(TOKENS, chunked.newCache(), { logits: "all" }), full)).toBeLessThan(
      TOLERANCE,
    );
    const last = chunked.forward(TOKENS, chunked.newCache());
    expect(maxAbsDiff(last, rows(full, TOKENS.length - 1, TOKENS.length))).toBeLessThan(TOLERANCE);
  });

  test("MLX logits match the float64 reference", () => {
    const expected = referenceForward(model.config, referenceWeights(dir), TOKENS);
    expect(maxAbsDiff(full, expected)).toBeLessThan(TOLERANCE);
  });

  test("a KV range exported into a fresh cache continues like the original", () => {
    const source = model.newCache();
    if (model.hasRecurrentState) {
      // A recurrent layer's state sums up every token before it in one array: it cannot go back
      // (trim), and a range ending at position p exports the state kept after p, which is there
      // only at the multiples of the capture interval (a block boundary) or the current position.
      source.captureSnapshots(4);
      model.forward(TOKENS.slice(0, 6), source);
      model.forward(TOKENS.slice(6, 10), source);
      expect([...source.recurrent.find((r) => r)!.snapshots.keys()]).toEqual([4, 8]);
      expect(source.canExport(0, 7)).toBe(false);
      expect(() => source.export(0, 7)).toThrow("holds no recurrent state after position 7");
      expect(source.canExport(8, 10)).toBe(true);
      expect(() => source.trim(2)).toThrow(RangeError);
      const exported = source.export(0, 8);
      const restored = model.newCache();
      restored.import(0, exported);
      restored.importRecurrent(exported);
      const continued = model.forward(TOKENS.slice(8), restored, { logits: "all" });
      expect(maxAbsDiff(continued, rows(full, 8, TOKENS.length))).toBeLessThan(TOLERANCE);
      source.dropSnapshots(8);
      expect(source.snapshotCount).toBe(0);
      return;
    }
    model.forward(TOKENS.slice(0, 10), source);
    const exported = source.export(0, 8) as LayerKV[];
    expect(exported).toHaveLength(model.numLayers);
    expect(exported[0].keys.shape).toEqual([1, model.kvHeads, 8, model.headDim]);
    expect(exported[0].values.shape).toEqual([1, model.kvHeads, 8, model.headDim]);
    expect(exported[0].keys.dtype).toBe(mx.float32);
    const before = exported[0].keys.tolist();

    const restored = model.newCache();
    restored.import(0, exported);
    expect(restored.offset).toBe(8);
    const continued = model.forward(TOKENS.slice(8), restored, { logits: "all" });
    expect(maxAbsDiff(continued, rows(full, 8, TOKENS.length))).toBeLessThan(TOLERANCE);

    // Trimming the source back to the exported length and continuing matches as well, and the
    // writes it makes do not reach the exported copy.
    expect(source.trim(2)).toBe(2);
    const fromTrimmed = model.forward(TOKENS.slice(8), source, { logits: "all" });
    expect(maxAbsDiff(fromTrimmed, rows(full, 8, TOKENS.length))).toBeLessThan(TOLERANCE);
    expect(exported[0].keys.tolist()).toEqual(before);
  });
});
