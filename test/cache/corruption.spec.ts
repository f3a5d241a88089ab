import * as fs from "node:fs";
import * as path from "node:path";
import { chainKeys, rootKey, type PrefixCache } from "../../src/cache";
import type { LoadedModel } from "../../src/model/loader";
import { openStore } from "../../src/store";
import {
  expectSameAsScratch,
  damageRecord,
  findRecord,
  generate,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
} from "./helpers";

let model: LoadedModel;

beforeAll(async () => {
  model = await tinyModel();
});

afterAll(removeTempDirs);

async function cachedPrompt(ssdDir: string): Promise<{ prompt: number[]; keys: Buffer[] }> {
  const prompt = randomTokens(31, 45, model.config.vocabSize);
  const cache = await openCache(model, { ssdDir });
  await generate(cache, model, "t", prompt); // 48 tokens in the sequence: 6 blocks
  await cache.close();
  // The keys of the first five blocks, which lie wholly inside the prompt.
  const keys = chainKeys(rootKey("t", model.fingerprint), prompt, 8, model.fingerprint, 40).map((l) => l.key);
  return { prompt, keys };
}

describe("a block damaged on SSD", () => {
  it("truncates the match before it; the answer is right, the counter rises, the block is rewritten", async () => {
    const ssdDir = tempDir("ssd");
    const { prompt, keys } = await cachedPrompt(ssdDir);
    damageRecord(ssdDir, keys[2]);

    let cache: PrefixCache = await openCache(model, { ssdDir });
    const run = await generate(cache, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 16, ssdTokens: 16, corruptBlocks: 1, lostTokens: 28 });
    expectSameAsScratch(model, prompt, run);
    expect(cache.stats().corruptBlocks).toBe(1);
    await cache.close();

    // The recomputed block was written again: after a restart the whole prefix restores.
    cache = await openCache(model, { ssdDir });
    const again = await generate(cache, model, "t", prompt);
    expect(again.report).toMatchObject({ restoredTokens: 44, ssdTokens: 44, corruptBlocks: 0 });
    expectSameAsScratch(model, prompt, again);
    await cache.close();
  });

  it("a stored block that passes the store's checksum but is not the block its key names is refused", async () => {
    const ssdDir = tempDir("ssd");
    const { prompt, keys } = await cachedPrompt(ssdDir);
    // Put block 3's bytes under block 2's key, directly in the store: a valid record, wrong content.
    const store = await openStore(path.join(ssdDir, "blocks"), {
      bytesMax: 64 * 1024 * 1024,
      fsync: "none",
      segmentBytes: 1024 * 1024,
    });
    const [third] = await store.getMany([keys[3]]);
    expect(await store.put([{ key: keys[2], payload: third as Buffer }])).toEqual(["persisted"]);
    await store.close();

    const cache = await openCache(model, { ssdDir });
    const run = await generate(cache, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 16, corruptBlocks: 1 });
    expectSameAsScratch(model, prompt, run);
    await cache.close();
  });

  it("getBlocks reports a damaged block as CORRUPT and drops it", async () => {
    const ssdDir = tempDir("ssd");
    const { keys } = await cachedPrompt(ssdDir);
    const record = findRecord(ssdDir, keys[0]);
    const fd = fs.openSync(record.file, "r+");
    fs.writeSync(fd, Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, record.offset + 64 + 2000);
    fs.closeSync(fd);
    const cache = await openCache(model, { ssdDir });
    const got = [];
    for await (const r of cache.getBlocks("t", keys.slice(0, 2)))
      got.push("block" in r ? "block" : r.error.code);
    expect(got).toEqual(["CORRUPT", "block"]);
    expect(cache.stats()).toMatchObject({ corruptBlocks: 1, indexedBlocks: 5 });
    await cache.close();
  });
});
