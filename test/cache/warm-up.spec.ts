import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { LoadedModel } from "../../src/model/loader";
import { layerSpecs, stagesWhole } from "../../src/cache/layer-sink";
import { encodeHeader } from "../../src/util/safetensors";
import {
  childEnv,
  generate,
  hybridModel,
  maxAbsDiff,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
  toFloat32,
  trackCaches,
  transpileForChild,
} from "./helpers";

// The engine's warm-up runs the persist and restore paths from a throwaway sequence into a fresh
// one: the fresh one must then hold exactly what the first held.
const { track, close } = trackCaches();

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
    cache.warmUp(from, into, 4096);
    expect(into.offset).toBe(24);
    const want = toFloat32(model.forward([7], from));
    const got = toFloat32(model.forward([7], into));
    expect(maxAbsDiff(got, want)).toBe(0);
    const staged = fs
      .readdirSync(cache.options.stagingDir)
      .map((f) => path.join(cache.options.stagingDir, f));
    expect(staged.map((f) => fs.statSync(f).size)).toEqual([1 << 20]);
    // The SSD reads' arenas, which the engine's memory budget counts, serve only runs staged whole.
    expect(cache.heldBytes).toBe(stagesWhole(model) ? 2 * ((1 << 20) + (1 << 20)) : 0);
  });

  it("grows the layer file to the longest chain on SSD when runs stage whole, and no further than the context", async () => {
    const ssdDir = tempDir("ssd");
    const writer = await openCache(model, { ssdDir });
    await generate(writer, model, "t", randomTokens(6, 300, model.config.vocabSize)); // a chain of 303 tokens
    await generate(writer, model, "t", randomTokens(7, 40, model.config.vocabSize));
    await writer.close();
    const sizes = async (contextTokens: number, bytesMax?: number): Promise<number[]> => {
      const cache = await track(openCache(model, { ssdDir, restoreBatchBytesMax: 1 << 20 }));
      const from = model.newCache(26);
      from.captureSnapshots(12);
      model.forward(randomTokens(5, 24, model.config.vocabSize), from);
      model.materialize(from);
      cache.warmUp(from, model.newCache(26), contextTokens, bytesMax);
      const dir = cache.options.stagingDir;
      const out = fs
        .readdirSync(dir)
        .sort()
        .map((f) => fs.statSync(path.join(dir, f)).size);
      await close(cache);
      return out;
    };
    // A layer file holds a safetensors header, then every layer's keys and values of `capacity` rows.
    const fileBytes = (capacity: number) =>
      encodeHeader(layerSpecs(model, capacity), {}).length +
      2 * model.numLayers * model.kvHeads * capacity * model.headDim * 4;
    if (stagesWhole(model)) {
      // layers.safetensors, then restore.safetensors: 303 tokens make a capacity of 512 plus a step.
      expect(await sizes(4096)).toEqual([fileBytes(768), 1 << 20]);
      expect(await sizes(100)).toEqual([fileBytes(512), 1 << 20]);
      // Not beyond what the engine's memory budget leaves a sequence: 768 rows of KV do not fit.
      const kv768 = fileBytes(768) - encodeHeader(layerSpecs(model, 768), {}).length;
      expect(await sizes(4096, kv768 - 1)).toEqual([1 << 20]);
    } else {
      expect(await sizes(4096)).toEqual([1 << 20]);
    }
  });
});

describe("warm-up with an SSD tier", () => {
  it("allocates the SSD reads' arenas and writes their pages, so the first restore does not fault them in", () => {
    const batchBytes = 32 << 20;
    const out = execFileSync(
      process.execPath,
      [
        transpileForChild(tempDir("child"), "warm-up-rss"),
        tempDir("ssd"),
        path.join(tempDir("staging"), "s"),
        String(batchBytes),
      ],
      { env: childEnv(), encoding: "utf8" },
    );
    const { rssGrowthBytes, heldBytes } = JSON.parse(out) as { rssGrowthBytes: number; heldBytes: number };
    // Two arenas of a batch and a MiB each, resident: allocated alone they would add almost nothing.
    expect(heldBytes).toBe(2 * (batchBytes + (1 << 20)));
    expect(rssGrowthBytes).toBeGreaterThan(0.9 * heldBytes);
  });
});
