import { chainKeys, rootKey, type KVBlockRecord } from "../../src/cache";
import type { PrefixCache } from "../../src/cache";
import type { LoadedModel } from "../../src/model/loader";
import {
  expectSameAsScratch,
  generate,
  maxAbsDiff,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
} from "./helpers";

// Tiny preset: 2 layers x keys/values x 2 KV heads x 16 head dims x 4 bytes = 512 bytes per token.
const BYTES_PER_TOKEN = 512;
const BLOCK_BYTES = 8 * BYTES_PER_TOKEN;

let model: LoadedModel;
const open: PrefixCache[] = [];

beforeAll(async () => {
  model = await tinyModel();
});

afterEach(async () => {
  for (const cache of open.splice(0)) await cache.close();
});

afterAll(removeTempDirs);

async function track(cache: Promise<PrefixCache>): Promise<PrefixCache> {
  const c = await cache;
  open.push(c);
  return c;
}

const vocab = () => model.config.vocabSize;

describe("restored KV gives the logits and greedy tokens of a run from scratch", () => {
  it("RAM hit: a repeated prompt restores all but its last token from RAM", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(1, 45, vocab());
    const first = await generate(cache, model, "t", prompt);
    expect(first.report.restoredTokens).toBe(0);
    expectSameAsScratch(model, prompt, first);

    const second = await generate(cache, model, "t", prompt);
    expect(second.report).toMatchObject({
      restoredTokens: 44,
      ramTokens: 44,
      ssdTokens: 0,
      corruptBlocks: 0,
    });
    expectSameAsScratch(model, prompt, second);
  });

  it("SSD hit after the blocks were evicted from RAM", async () => {
    // Room for 8 blocks: the second prompt's 8 blocks push out all 6 of the first.
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), ramBytesMax: 8 * BLOCK_BYTES }));
    const a = randomTokens(2, 45, vocab());
    const b = randomTokens(3, 60, vocab());
    await generate(cache, model, "t", a);
    await cache.flush();
    await generate(cache, model, "t", b);
    expect(cache.lookup("t", a).ramTokens).toBe(0);

    const again = await generate(cache, model, "t", a);
    expect(again.report).toMatchObject({ restoredTokens: 44, ramTokens: 0, ssdTokens: 44, corruptBlocks: 0 });
    expectSameAsScratch(model, a, again);
    expect(cache.stats().ram.evictions).toBeGreaterThanOrEqual(6);
  });

  it("after a restart the same prompt is served from SSD", async () => {
    const ssdDir = tempDir("ssd");
    const prompt = randomTokens(4, 70, vocab());
    const before = await openCache(model, { ssdDir });
    await generate(before, model, "t", prompt);
    await before.close();

    const after = await track(openCache(model, { ssdDir }));
    expect(after.stats().indexedBlocks).toBe(10); // 73 tokens in the sequence: 9 full blocks and a tail of 1
    const run = await generate(after, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 69, ramTokens: 0, ssdTokens: 69 });
    expectSameAsScratch(model, prompt, run);
  });

  it("restored from RAM and SSD, then decoded together in one batch: each as from scratch", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), ramBytesMax: 8 * BLOCK_BYTES }));
    model.calibrateBatchRows(4);
    const prompts = [
      randomTokens(21, 45, vocab()),
      randomTokens(22, 30, vocab()),
      randomTokens(23, 61, vocab()),
    ];
    for (const p of prompts) await generate(cache, model, "t", p);
    await cache.flush();
    // The last prompt's blocks are in RAM, the first's were pushed out to SSD.
    expect(cache.lookup("t", prompts[0]).ssdTokens).toBeGreaterThan(0);
    expect(cache.lookup("t", prompts[2]).ramTokens).toBeGreaterThan(0);
    const steps = 4;
    const sequences = [];
    const logits: Float32Array[][] = prompts.map(() => []);
    const tokens: number[][] = prompts.map(() => []);
    for (const [i, p] of prompts.entries()) {
      const sequence = model.newCache(p.length + steps);
      const report = await cache.restore(cache.lookup("t", p, { tokensMax: p.length - 1 }), sequence);
      expect(report.restoredTokens).toBe(p.length - 1);
      const first = Float32Array.from(
        model.forward(p.slice(sequence.offset), sequence).reshape([-1]).tolist() as number[],
      );
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
    prompts.forEach((p, i) => expectSameAsScratch(model, p, { tokens: tokens[i], logits: logits[i][0] }));
    // Every decode step, not only the first token, matches a run from scratch.
    for (const [i, p] of prompts.entries()) {
      const scratch = model.newCache(p.length + steps);
      model.forward(p, scratch);
      for (let step = 1; step < steps; step++) {
        const want = Float32Array.from(
          model
            .forward([tokens[i][step - 1]], scratch)
            .reshape([-1])
            .tolist() as number[],
        );
        expect(maxAbsDiff(logits[i][step], want)).toBeLessThanOrEqual(1e-4);
      }
    }
  });

  it("a trailing partial block is stored and reused by a longer prompt", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = randomTokens(5, 20, vocab());
    // One step: the sequence holds the 20 prompt tokens, 2 full blocks and a partial one of 4.
    await generate(cache, model, "t", prompt, 1);
    const longer = [...prompt, ...randomTokens(6, 11, vocab())];
    const match = cache.lookup("t", longer);
    expect(match.blocks.map((b) => [b.start, b.tokens, b.blockTokens])).toEqual([
      [0, 8, 8],
      [8, 8, 8],
      [16, 4, 4],
    ]);
    const run = await generate(cache, model, "t", longer);
    expect(run.report.restoredTokens).toBe(20);
    expectSameAsScratch(model, longer, run);
  });

  it("a prompt that diverges mid-block reuses the block's matching leading tokens", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(7, 45, vocab());
    await generate(cache, model, "t", prompt);
    const diverging = [...prompt.slice(0, 27), ...randomTokens(8, 20, vocab())];
    const run = await generate(cache, model, "t", diverging);
    expect(run.report).toMatchObject({ restoredTokens: 27, ramTokens: 27 });
    expectSameAsScratch(model, diverging, run);
    // The divergent continuation was stored as a sibling: the same prompt now hits to its end.
    expect((await generate(cache, model, "t", diverging)).report.restoredTokens).toBe(46);
  });

  it("a prompt shorter than one block hits on repeat", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(9, 5, vocab());
    expect((await generate(cache, model, "t", prompt, 1)).report.restoredTokens).toBe(0);
    const again = await generate(cache, model, "t", prompt, 1);
    expect(again.report.restoredTokens).toBe(4);
    expectSameAsScratch(model, prompt, again);
  });

  it("a multi-turn conversation reuses the previous answer's KV", async () => {
    const cache = await track(openCache(model));
    const turn1 = randomTokens(10, 30, vocab());
    const first = await generate(cache, model, "t", turn1, 6);
    const turn2 = [...turn1, ...first.tokens, ...randomTokens(11, 9, vocab())];
    const second = await generate(cache, model, "t", turn2);
    // Prompt and the five answer tokens that were run; the sixth was sampled but never run.
    expect(second.report.restoredTokens).toBe(35);
    expectSameAsScratch(model, turn2, second);
  });

  it("blocks fetched with getBlocks and stored with putBlocks serve another cache instance", async () => {
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

    for (const ssdDir of [tempDir("ssd"), null]) {
      const target = await track(openCache(model, { ssdDir }));
      expect(await target.putBlocks("t", records)).toEqual({ accepted: 7, rejected: [] });
      const run = await generate(target, model, "t", prompt);
      expect(run.report.restoredTokens).toBe(49);
      expect(ssdDir === null ? run.report.ramTokens : run.report.ssdTokens).toBe(49);
      expectSameAsScratch(model, prompt, run);
    }
  });

  it("many random prompts with shared prefixes match the uncached run on every path", async () => {
    const ssdDir = tempDir("ssd");
    // A small RAM budget keeps blocks moving between tiers; the cache is reopened midway.
    let cache = await openCache(model, { ssdDir, ramBytesMax: 24 * BLOCK_BYTES });
    const prefixes = [0, 1, 2].map((i) => randomTokens(100 + i, 12 + 13 * i, vocab()));
    const seen: number[][] = [];
    const tiers = { ram: 0, ssd: 0 };
    for (let i = 0; i < 24; i++) {
      if (i === 12) {
        await cache.close();
        cache = await openCache(model, { ssdDir, ramBytesMax: 24 * BLOCK_BYTES });
      }
      const prefix = prefixes[i % 3];
      const cut = randomTokens(200 + i, 1, prefix.length)[0];
      const prompt = [...prefix.slice(0, cut), ...randomTokens(300 + i, 1 + (i % 11), vocab())];
      const run = await generate(cache, model, "t", prompt, 3);
      expectSameAsScratch(model, prompt, run);
      // Every sequence stays cached (the SSD tier is far from its cap), so the reuse is the
      // longest common prefix with any earlier sequence, short of the prompt's last token.
      const expected = Math.min(prompt.length - 1, Math.max(0, ...seen.map((s) => commonPrefix(s, prompt))));
      expect(run.report.restoredTokens).toBe(expected);
      tiers.ram += run.report.ramTokens;
      tiers.ssd += run.report.ssdTokens;
      seen.push([...prompt, ...run.tokens.slice(0, -1)]);
      await cache.flush();
    }
    await cache.close();
    expect(tiers.ram).toBeGreaterThan(0);
    expect(tiers.ssd).toBeGreaterThan(0);
  });
});

function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

describe("block identity", () => {
  it("the chain from rootKey(tenant) names the blocks lookup returns", async () => {
    const cache = await track(openCache(model));
    const prompt = randomTokens(13, 20, vocab());
    await generate(cache, model, "acme", prompt, 1);
    const links = chainKeys(rootKey("acme", model.fingerprint), prompt, 8, model.fingerprint);
    expect(cache.lookup("acme", prompt).blocks.map((b) => b.key.toString("hex"))).toEqual(
      links.map((l) => l.key.toString("hex")),
    );
  });
});
