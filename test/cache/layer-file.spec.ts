import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { chainKeys, rootKey, type PrefixCache } from "../../src/cache";
import { SsdTier } from "../../src/cache/ssd-tier";
import { LayerFile, Staging } from "../../src/cache/staging";
import type { LoadedModel, ModelCache } from "../../src/model/loader";
import {
  damageRecord,
  generate,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
  trackCaches,
} from "./helpers";

// Tiny preset: 512 bytes of KV per token, 4096 per block of 8 tokens.
const BLOCK_BYTES = 4096;

let model: LoadedModel;
const { track, close } = trackCaches();

beforeAll(async () => {
  model = await tinyModel();
});

afterEach(() => jest.restoreAllMocks());

afterAll(removeTempDirs);

const tokens = (seed: number, n: number) => randomTokens(seed, n, model.config.vocabSize);

/** Every float of positions [from, to) of each layer's keys and values, layer by layer. */
function rows(sequence: ModelCache, from: number, to: number): number[][] {
  return sequence.layers.flatMap((layer) =>
    layer
      .state()
      .map(
        (a) =>
          a.index(mx.Slice(), mx.Slice(), mx.Slice(from, to), mx.Slice()).reshape([-1]).tolist() as number[],
      ),
  );
}

/**
 * A cache whose blocks are all on SSD (reopened, so RAM is empty), restored in batches of two
 * blocks, with the sequences that computed `prompts` (their KV is what the blocks hold).
 */
async function ssdOnly(
  prompts: number[][],
  log?: (line: string) => void,
): Promise<{ cache: PrefixCache; computed: ModelCache[] }> {
  const ssdDir = tempDir("ssd");
  const options = { ssdDir, restoreBatchBytesMax: 2 * BLOCK_BYTES };
  const writer = await track(openCache(model, options));
  const computed: ModelCache[] = [];
  for (const prompt of prompts) computed.push((await generate(writer, model, "t", prompt)).sequence);
  await close(writer);
  const cache = await track(openCache(model, options, { log }));
  expect(cache.stats().ram.blocks).toBe(0);
  return { cache, computed };
}

async function restore(cache: PrefixCache, prompt: number[], reserve: number, signal?: AbortSignal) {
  const sequence = model.newCache(reserve);
  const report = await cache.restore(cache.lookup("t", prompt, { tokensMax: prompt.length - 1 }), sequence, {
    signal,
  });
  return { sequence, report };
}

describe("an SSD run staged whole and adopted as the sequence's buffers", () => {
  it("holds the stored KV bit for bit and zeros after it, over the bytes of a longer restore before it", async () => {
    const long = tokens(1, 90);
    const short = tokens(2, 29);
    const { cache, computed } = await ssdOnly([long, short]);
    const staged = jest.spyOn(Staging.prototype, "layerFile");

    const a = await restore(cache, long, 120);
    expect(a.report).toMatchObject({ restoredTokens: 89, ssdTokens: 89, corruptBlocks: 0 });
    expect(rows(a.sequence, 0, 89)).toEqual(rows(computed[0], 0, 89));
    // The same capacity, fewer rows: the file still holds the long prompt's rows past 28.
    const b = await restore(cache, short, 120);
    expect(b.report).toMatchObject({ restoredTokens: 28, ssdTokens: 28 });
    expect(staged).toHaveBeenCalledTimes(2);
    expect(staged.mock.results.every((r) => r.value !== null)).toBe(true);
    expect(b.sequence.capacity).toBe(a.sequence.capacity);
    expect(rows(b.sequence, 0, 28)).toEqual(rows(computed[1], 0, 28));
    for (const values of rows(b.sequence, 28, b.sequence.capacity))
      expect(values.every((v) => Object.is(v, 0))).toBe(true);

    // The sequence goes on from the restored rows as from its own.
    model.forward(short.slice(28), b.sequence);
    model.materialize(b.sequence);
    expect(b.sequence.offset).toBe(29);
  });

  it("stages only the run's rows for a sequence that reserved much more room, and pads them to it", async () => {
    const prompt = tokens(9, 90);
    const { cache, computed } = await ssdOnly([prompt]);
    const staged = jest.spyOn(Staging.prototype, "layerFile");
    const { sequence, report } = await restore(cache, prompt, 2000);
    expect(report.restoredTokens).toBe(89);
    // 256 rows in the file (89 tokens rounded up to the cache's step), 2,048 in the sequence.
    expect(staged.mock.calls[0][0].map((t) => t.shape[2])).toEqual(Array(4).fill(256));
    expect(sequence.capacity).toBe(2048);
    expect(rows(sequence, 0, 89)).toEqual(rows(computed[0], 0, 89));
    for (const values of rows(sequence, 89, 2048)) expect(values.every((v) => Object.is(v, 0))).toBe(true);
  });

  it("ends at a block failing its check in a later batch, with zeros after the blocks before it", async () => {
    const prompt = tokens(3, 61);
    const { cache, computed } = await ssdOnly([tokens(4, 100), prompt]);
    await restore(cache, tokens(4, 100), 128); // leaves 99 rows of another prompt in the file
    const keys = chainKeys(rootKey("t", model.fingerprint), prompt, 8, model.fingerprint, 56).map(
      (l) => l.key,
    );
    await close(cache);
    damageRecord(cache.options.ssdDir!, keys[5]); // the second block of the third batch
    const reopened = await track(openCache(model, cache.options));
    const { sequence, report } = await restore(reopened, prompt, 128);
    expect(report).toMatchObject({ restoredTokens: 40, ssdTokens: 40, corruptBlocks: 1 });
    expect(rows(sequence, 0, 40)).toEqual(rows(computed[1], 0, 40));
    for (const values of rows(sequence, 40, sequence.capacity))
      expect(values.every((v) => Object.is(v, 0))).toBe(true);
  });

  it("a write into the layer file that fails (a full tmpfs) restores nothing, and the next restore is exact", async () => {
    const prompts = [tokens(10, 70), tokens(11, 70)];
    const logged: string[] = [];
    const { cache, computed } = await ssdOnly(prompts, (line) => logged.push(line));
    // The layer file on a full device: /dev/full answers every write with ENOSPC.
    const layers = path.join(cache.options.stagingDir, "layers.safetensors");
    fs.symlinkSync("/dev/full", layers);
    const failed = await restore(cache, prompts[0], 80);
    expect(failed.report).toMatchObject({
      restoredTokens: 0,
      ssdTokens: 0,
      lostTokens: 69,
      corruptBlocks: 0,
    });
    expect(failed.sequence.offset).toBe(0);
    // The operator learns why, once.
    expect(logged).toEqual([
      expect.stringMatching(/layer file .* could not be written \(.*ENOSPC.*\); 69 tokens/),
    ]);
    fs.rmSync(layers);
    const { sequence, report } = await restore(cache, prompts[1], 80);
    expect(report.restoredTokens).toBe(69);
    expect(rows(sequence, 0, 69)).toEqual(rows(computed[1], 0, 69));
  });

  it("two restores at once: one stages whole, the other batch by batch, both exact", async () => {
    const prompts = [tokens(5, 70), tokens(6, 53)];
    const { cache, computed } = await ssdOnly(prompts);
    const staged = jest.spyOn(Staging.prototype, "layerFile");
    const intoArena = jest.spyOn(SsdTier.prototype, "getManyInto");
    const fresh = jest.spyOn(SsdTier.prototype, "getMany");
    const [a, b] = await Promise.all(prompts.map((p) => restore(cache, p, p.length + 8)));
    expect(staged.mock.results.map((r) => r.value !== null)).toEqual([true, false]);
    // The one staged whole reads into the arenas, the other into Buffers of its own.
    expect(intoArena.mock.calls.length).toBeGreaterThan(0);
    expect(fresh.mock.calls.length).toBeGreaterThan(0);
    expect(a.report.restoredTokens).toBe(69);
    expect(b.report.restoredTokens).toBe(52);
    expect(rows(a.sequence, 0, 69)).toEqual(rows(computed[0], 0, 69));
    expect(rows(b.sequence, 0, 52)).toEqual(rows(computed[1], 0, 52));
  });

  it("reads its batches into two arenas in turn, each reused only once the writes from it ended", async () => {
    const prompt = tokens(12, 90);
    const { cache, computed } = await ssdOnly([prompt]);
    const intoArena = jest.spyOn(SsdTier.prototype, "getManyInto");
    const fresh = jest.spyOn(SsdTier.prototype, "getMany");
    // Every write into the layer file starts late: a batch read into an arena before the writes from
    // its previous batch ended would hand those writes the new batch's bytes.
    type Writes = { writeAll(position: number, pieces: readonly Uint8Array[]): Promise<void> };
    const writes = LayerFile.prototype as unknown as Writes;
    const writeAll = writes.writeAll;
    jest.spyOn(writes, "writeAll").mockImplementation(async function (this: Writes, ...args) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      return writeAll.apply(this, args);
    });
    for (let round = 0; round < 2; round++) {
      const { sequence, report } = await restore(cache, prompt, 96);
      expect(report.restoredTokens).toBe(89);
      expect(rows(sequence, 0, 89)).toEqual(rows(computed[0], 0, 89));
    }
    // 11 blocks in batches of two: 6 reads a restore, all into the same two arenas.
    expect(fresh).not.toHaveBeenCalled();
    expect(intoArena).toHaveBeenCalledTimes(12);
    expect(new Set(intoArena.mock.calls.map(([, arena]) => arena)).size).toBe(2);
    // The engine's memory budget counts them (a cache without an SSD tier holds none).
    const arenas = intoArena.mock.calls[0][1];
    expect(cache.heldBytes).toBe(2 * arenas.length);
    const ramOnly = await track(openCache(model, {}));
    expect(ramOnly.heldBytes).toBe(0);
  });

  it("loads in the background, and the next restore writes the file only once the last load read it", async () => {
    const prompts = [tokens(13, 90), tokens(14, 90), tokens(15, 90)];
    const { cache, computed } = await ssdOnly(prompts);
    // The first restore's loads do not start on their own: its buffers read the file when
    // evaluated, which the second restore must do before it writes the file.
    const started = jest.spyOn(mx, "asyncEval").mockImplementation(() => {});
    const a = await restore(cache, prompts[0], 96);
    started.mockRestore();
    const b = await restore(cache, prompts[1], 96);
    expect(rows(a.sequence, 0, 89)).toEqual(rows(computed[0], 0, 89));
    expect(rows(b.sequence, 0, 89)).toEqual(rows(computed[1], 0, 89));
    // A sequence dropped before its buffers were read holds up nothing.
    jest.spyOn(mx, "asyncEval").mockImplementation(() => {});
    await restore(cache, prompts[2], 96);
    jest.restoreAllMocks();
    const c = await restore(cache, prompts[1], 96);
    expect(rows(c.sequence, 0, 89)).toEqual(rows(computed[1], 0, 89));
  });

  it("an aborted restore loads nothing and leaves no write running into the next one", async () => {
    const prompts = [tokens(7, 90), tokens(8, 90)];
    const { cache, computed } = await ssdOnly(prompts);
    // Aborted once its first batch's writes are on their way.
    const controller = new AbortController();
    const write = LayerFile.prototype.write;
    jest.spyOn(LayerFile.prototype, "write").mockImplementation(function (this: LayerFile, ...args) {
      controller.abort();
      return write.apply(this, args);
    });
    const aborted = restore(cache, prompts[0], 96, controller.signal);
    await expect(aborted).rejects.toThrow();
    jest.restoreAllMocks();
    const { sequence, report } = await restore(cache, prompts[1], 96);
    expect(report.restoredTokens).toBe(89);
    expect(rows(sequence, 0, 89)).toEqual(rows(computed[1], 0, 89));
    for (const values of rows(sequence, 89, sequence.capacity))
      expect(values.every((v) => Object.is(v, 0))).toBe(true);
  });
});
