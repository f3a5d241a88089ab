import type { KVBlockRecord, PrefixCache } from "../../src/cache";
import { blockDataBytes } from "../../src/cache/block-codec";
import type { LoadedModel } from "../../src/model/loader";
import {
  damageRecord,
  expectSameAsScratch,
  generate,
  hybridModel,
  maxAbsDiff,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  trackCaches,
} from "./helpers";

// Hybrid models through every path of the prefix cache, against the same prompt computed from
// scratch: qwen3_5 (Gated DeltaNet layers, whose blocks carry the recurrent state after their last
// token) and gemma3_text (a 12-token sliding window on two of its three layers). Blocks of 8 tokens.
const B = 8;
const { track } = trackCaches();

afterAll(removeTempDirs);

describe.each(["qwen3_5", "gemma3_text"] as const)("%s: a cached run equals a run from scratch", (kind) => {
  let model: LoadedModel;
  const recurrent = kind === "qwen3_5";
  const vocab = () => model.config.vocabSize;
  /** Tokens a restore brings back of a match of n tokens whose last block holds `held`. */
  const restorable = (n: number, held = B) => (recurrent && n % B !== 0 && n % B < held ? n - (n % B) : n);

  beforeAll(async () => {
    model = await hybridModel(kind);
  });

  it("RAM hit: a repeated prompt restores to its last block boundary (qwen3_5) or last token", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(1, 45, vocab());
    expect((await generate(cache, model, "t", prompt)).report.restoredTokens).toBe(0);
    const again = await generate(cache, model, "t", prompt);
    expect(again.report).toMatchObject({
      restoredTokens: restorable(44),
      ramTokens: restorable(44),
      midBlockTokens: 44 - restorable(44),
      corruptBlocks: 0,
    });
    expectSameAsScratch(model, prompt, again);
  });

  it("SSD hit after the blocks were evicted from RAM", async () => {
    const blockBytes = blockDataBytes(model, B);
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), ramBytesMax: 8 * blockBytes }));
    const a = randomTokens(2, 45, vocab());
    await generate(cache, model, "t", a);
    await cache.flush();
    await generate(cache, model, "t", randomTokens(3, 70, vocab()));
    expect(cache.lookup("t", a).ramTokens).toBe(0);
    const again = await generate(cache, model, "t", a);
    expect(again.report).toMatchObject({
      restoredTokens: restorable(44),
      ramTokens: 0,
      ssdTokens: restorable(44),
    });
    expectSameAsScratch(model, a, again);
  });

  it("after a restart the same prompt is served from SSD", async () => {
    const ssdDir = tempDir("ssd");
    const prompt = randomTokens(4, 70, vocab());
    const before = await openCache(model, { ssdDir });
    await generate(before, model, "t", prompt);
    await before.close();
    const after = await track(openCache(model, { ssdDir }));
    expect(after.stats().indexedBlocks).toBe(10); // 73 tokens: 9 full blocks and a tail of 1
    const run = await generate(after, model, "t", prompt);
    expect(run.report).toMatchObject({
      restoredTokens: restorable(69),
      ramTokens: 0,
      ssdTokens: restorable(69),
    });
    expectSameAsScratch(model, prompt, run);
  });

  it("blocks fetched with getBlocks and stored with putBlocks serve another cache", async () => {
    const source = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = randomTokens(12, 50, vocab());
    await generate(source, model, "t", prompt);
    await source.flush();
    const keys = source.lookup("t", prompt).blocks.map((b) => b.key);
    expect(keys.length).toBe(7);
    const records: KVBlockRecord[] = [];
    for await (const r of source.getBlocks("t", keys)) {
      if (!("block" in r)) throw new Error(`block missing: ${r.error.code}`);
      records.push(r.block);
    }
    expect(records[0].formatVersion).toBe(recurrent ? 2 : 1);
    expect(records[0].layerKinds).toEqual(recurrent ? model.layerTypes : []);
    for (const ssdDir of [tempDir("ssd"), null]) {
      const target = await track(openCache(model, { ssdDir }));
      expect(await target.putBlocks("t", records)).toEqual({ accepted: 7, rejected: [] });
      const run = await generate(target, model, "t", prompt);
      expect(run.report.restoredTokens).toBe(restorable(49));
      expect(ssdDir === null ? run.report.ramTokens : run.report.ssdTokens).toBe(restorable(49));
      expectSameAsScratch(model, prompt, run);
    }
  });

  it("an exported bundle imports into another cache and serves the prompt from there", async () => {
    const source = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = randomTokens(14, 37, vocab());
    await generate(source, model, "t", prompt);
    await source.flush();
    const pieces: Buffer[] = [];
    for await (const piece of source.exportBundle("t")) pieces.push(piece);
    const bundle = Buffer.concat(pieces);
    for (const ssdDir of [tempDir("ssd"), null]) {
      const target = await track(openCache(model, { ssdDir }));
      const report = await target.importBundle(
        "t",
        (async function* () {
          yield bundle;
        })(),
      );
      expect(report).toMatchObject({ blocks: 5, tokens: 40 });
      const run = await generate(target, model, "t", prompt);
      expect(run.report.restoredTokens).toBe(restorable(36));
      expectSameAsScratch(model, prompt, run);
    }
  });

  it("a prompt extending a cached one by a non-multiple of the block size reuses all of it", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = randomTokens(5, 20, vocab());
    // One step: the sequence holds the 20 prompt tokens, 2 full blocks and a tail of 4.
    await generate(cache, model, "t", prompt, 1);
    const longer = [...prompt, ...randomTokens(6, 11, vocab())];
    const run = await generate(cache, model, "t", longer);
    expect(run.report.restoredTokens).toBe(20);
    expectSameAsScratch(model, longer, run);
  });

  it("a prompt diverging mid-block reuses up to the divergence (to the block boundary for qwen3_5)", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(7, 45, vocab());
    await generate(cache, model, "t", prompt);
    const diverging = [...prompt.slice(0, 27), ...randomTokens(8, 20, vocab())];
    const run = await generate(cache, model, "t", diverging);
    expect(run.report).toMatchObject({ restoredTokens: restorable(27), midBlockTokens: 27 - restorable(27) });
    expectSameAsScratch(model, diverging, run);
    // The divergent continuation was stored beside it: the same prompt now hits to its end.
    expect((await generate(cache, model, "t", diverging)).report.restoredTokens).toBe(restorable(46));
  });

  it("divergence one token after a block boundary", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = randomTokens(9, 40, vocab());
    await generate(cache, model, "t", prompt);
    const diverging = [...prompt.slice(0, 25), ...randomTokens(10, 9, vocab())];
    const run = await generate(cache, model, "t", diverging);
    expect(run.report.restoredTokens).toBe(recurrent ? 24 : 25);
    expectSameAsScratch(model, diverging, run);
  });

  it("a match whose last block was evicted while its parent remains restores up to the parent", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(11, 45, vocab());
    await generate(cache, model, "t", prompt);
    const blocks = cache.lookup("t", prompt, { tokensMax: 44 }).blocks;
    expect(blocks.length).toBe(6);
    const evicted = await cache.evict("t", { keys: [blocks[4].key] }, { tier: "both", force: false });
    expect(evicted.evictedBlocks).toBe(1);
    const run = await generate(cache, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 32, ramTokens: 32 });
    expectSameAsScratch(model, prompt, run);
  });

  it("an SSD restore read in batches that stops at a damaged block continues from the batch before it", async () => {
    // Two blocks per restore batch: blocks 0-1, 2-3, 4-5. Block 4 is damaged, so the restore ends
    // after block 3, the last block of the second batch, whose state the sequence continues from.
    const blockBytes = blockDataBytes(model, B);
    const ssdDir = tempDir("ssd");
    const prompt = randomTokens(12, 53, vocab());
    const before = await openCache(model, { ssdDir });
    await generate(before, model, "t", prompt);
    const keys = before.lookup("t", prompt, { tokensMax: 52 }).blocks.map((b) => b.key);
    await before.close();
    expect(keys.length).toBe(7);
    damageRecord(ssdDir, keys[4]);
    const cache = await track(openCache(model, { ssdDir, restoreBatchBytesMax: 2 * blockBytes }));
    const run = await generate(cache, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 32, ssdTokens: 32, corruptBlocks: 1 });
    expect(run.report.batches.map((b) => b.blocks)).toEqual([2, 2]);
    expectSameAsScratch(model, prompt, run);
  });

  it("restored from RAM and SSD, then decoded together in one batch: each as from scratch", async () => {
    const blockBytes = blockDataBytes(model, B);
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), ramBytesMax: 8 * blockBytes }));
    model.calibrateBatchRows(4);
    const prompts = [
      randomTokens(21, 45, vocab()),
      randomTokens(22, 30, vocab()),
      randomTokens(23, 61, vocab()),
    ];
    for (const p of prompts) await generate(cache, model, "t", p);
    await cache.flush();
    expect(cache.lookup("t", prompts[0]).ssdTokens).toBeGreaterThan(0);
    expect(cache.lookup("t", prompts[2]).ramTokens).toBeGreaterThan(0);
    const steps = 4;
    const sequences = [];
    const logits: Float32Array[][] = prompts.map(() => []);
    const tokens: number[][] = prompts.map(() => []);
    for (const [i, p] of prompts.entries()) {
      const sequence = model.newCache(p.length + steps);
      const report = await cache.restore(cache.lookup("t", p, { tokensMax: p.length - 1 }), sequence);
      expect(report.restoredTokens).toBe(restorable(p.length - 1));
      const first = toArray(model.forward(p.slice(sequence.offset), sequence));
      logits[i].push(first);
      tokens[i].push(first.indexOf(Math.max(...first)));
      sequences.push(sequence);
    }
    while (tokens[0].length < steps) {
      const rows = model
        .decodeBatch(
          tokens.map((t) => t[t.length - 1]),
          sequences,
        )
        .tolist() as number[][];
      rows.forEach((row, i) => {
        logits[i].push(Float32Array.from(row));
        tokens[i].push(row.indexOf(Math.max(...row)));
      });
    }
    for (const [i, p] of prompts.entries()) {
      expectSameAsScratch(model, p, { tokens: tokens[i], logits: logits[i][0] });
      const scratch = model.newCache(p.length + steps);
      model.forward(p, scratch);
      for (let step = 1; step < steps; step++) {
        const want = toArray(model.forward([tokens[i][step - 1]], scratch));
        expect(maxAbsDiff(logits[i][step], want)).toBeLessThanOrEqual(1e-4);
      }
    }
  });
});

describe("qwen3_5: recurrent snapshots", () => {
  let model: LoadedModel;
  beforeAll(async () => {
    model = await hybridModel("qwen3_5");
  });

  it("blocks carry the state after their last token, and a sequence drops the ones it handed over", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(30, 29, model.config.vocabSize);
    const sequence = model.newCache(40);
    sequence.captureSnapshots(B);
    model.forward(prompt.slice(0, 13), sequence);
    model.forward(prompt.slice(13), sequence);
    model.materialize(sequence);
    expect(sequence.snapshotCount).toBe(3); // after 8, 16 and 24 tokens
    const report = cache.persist("t", prompt, sequence, { partialTail: false });
    expect(report.blocksAdded).toBe(3);
    sequence.dropSnapshots(24);
    expect(sequence.snapshotCount).toBe(0);
    // The trailing block ends at the sequence's own position: its state is the current one.
    expect(cache.persist("t", prompt, sequence).blocksAdded).toBe(1);
    expect(cache.lookup("t", prompt).tokens).toBe(29);
  });

  it("a sequence that kept no snapshot persists nothing before its last position", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(31, 20, model.config.vocabSize);
    const sequence = model.newCache(20);
    model.forward(prompt, sequence);
    model.materialize(sequence);
    expect(cache.persist("t", prompt, sequence).blocksAdded).toBe(0);
  });
});

describe("gemma3_text: sliding-window edge cases", () => {
  let model: LoadedModel;
  let cache: PrefixCache;
  beforeAll(async () => {
    model = await hybridModel("gemma3_text");
  });
  beforeEach(async () => {
    cache = await track(openCache(model, { ssdDir: tempDir("ssd") }));
  });

  it.each([
    ["shorter than", 10],
    ["equal to", 12],
    ["longer than", 30],
  ])("a prompt %s the 12-token window, restored from RAM and from SSD", async (_, n) => {
    const prompt = randomTokens(40 + n, n, model.config.vocabSize);
    await generate(cache, model, "t", prompt);
    const ram = await generate(cache, model, "t", prompt);
    expect(ram.report.ramTokens).toBe(n - 1);
    expectSameAsScratch(model, prompt, ram);
    await cache.flush();
    await cache.evict("t", { tokens: prompt }, { tier: "ram", force: false });
    const ssd = await generate(cache, model, "t", prompt);
    expect(ssd.report.ssdTokens).toBe(n - 1);
    expectSameAsScratch(model, prompt, ssd);
  });

  it("restores only the window's rows of sliding layers, and never stores the rows it skipped", async () => {
    const prompt = randomTokens(60, 45, model.config.vocabSize);
    await generate(cache, model, "t", prompt);
    await cache.flush();
    await cache.evict("t", { tokens: prompt }, { tier: "ram", force: false });
    // The fifth block ([32, 40)) leaves the SSD tier: the restore ends at 32, and the sliding
    // layers take only the rows a query at 32 or later can see.
    const keys = cache.lookup("t", prompt).blocks.map((b) => b.key);
    await cache.evict("t", { keys: [keys[4]] }, { tier: "ssd", force: false });
    const run = await generate(cache, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 32, ssdTokens: 32 });
    expectSameAsScratch(model, prompt, run);
    // Local layers (0 and 2) hold rows from 32 - 12 on; the global layer all of them.
    expect(run.sequence.layers.map((l) => l.skippedBelow)).toEqual([20, 0, 20]);
    expect(run.sequence.canExport(16, 24)).toBe(false);
    expect(run.sequence.canExport(24, 32)).toBe(true);
    // Blocks restored from SSD below the window stayed on SSD only (not promoted with zero rows);
    // the next runs, from RAM and SSD, still equal a run from scratch.
    expect(cache.lookup("t", prompt).ssdTokens).toBeGreaterThan(0);
    expectSameAsScratch(model, prompt, await generate(cache, model, "t", prompt));
    await cache.flush();
    await cache.evict("t", { tokens: prompt }, { tier: "ram", force: false });
    expectSameAsScratch(model, prompt, await generate(cache, model, "t", prompt));
  });

  it.each([12, 24])("a match ending exactly at a window boundary (%i tokens)", async (at) => {
    const prompt = randomTokens(50, 40, model.config.vocabSize);
    await generate(cache, model, "t", prompt);
    const diverging = [...prompt.slice(0, at), ...randomTokens(51, 7, model.config.vocabSize)];
    const run = await generate(cache, model, "t", diverging, 6);
    expect(run.report.restoredTokens).toBe(at);
    expectSameAsScratch(model, diverging, run);
  });
});

function toArray(logits: import("@frost-beta/mlx").core.array): Float32Array {
  return Float32Array.from(logits.reshape([-1]).tolist() as number[]);
}
