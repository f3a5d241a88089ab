import * as fs from "node:fs";
import * as path from "node:path";
import type { LoadedModel } from "../../src/model/loader";
import {
  hybridModel,
  maxAbsDiff,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
  toFloat32,
  trackCaches,
} from "./helpers";

// The engine's warm-up runs the persist and restore paths from a throwaway sequence into a fresh
// one: the fresh one must then hold exactly what the first held.
const { track } = trackCaches();

afterAll(removeTempDirs);

describe.each([
  ["qwen2 (full attention)", () => tinyModel()],
  ["qwen3_5 (recurrent layers)", () => hybridModel("qwen3_5")],
  ["gemma3_text (sliding window)", () => hybridModel("gemma3_text")],
] as const)("warm-up of %s", (_name, load) => {
  let model: LoadedModel;
  beforeAll(async () => {
    model = await load();
  });

  it("restores the throwaway sequence into the fresh one exactly, and grows the staging file", async () => {
    const ssdDir = tempDir("ssd");
    const cache = await track(openCache(model, { ssdDir, restoreBatchBytesMax: 1 << 20 }));
    const tokens = randomTokens(5, 24, model.config.vocabSize);
    const from = model.newCache(26);
    from.captureSnapshots(12);
    model.forward(tokens, from);
    model.materialize(from);
    const into = model.newCache(26);
    cache.warmUp(from, into);
    expect(into.offset).toBe(24);
    const want = toFloat32(model.forward([7], from));
    const got = toFloat32(model.forward([7], into));
    expect(maxAbsDiff(got, want)).toBe(0);
    const staged = fs
      .readdirSync(cache.options.stagingDir)
      .map((f) => path.join(cache.options.stagingDir, f));
    expect(staged.map((f) => fs.statSync(f).size)).toEqual([1 << 20]);
  });
});
