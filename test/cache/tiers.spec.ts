import * as fs from "node:fs";
import * as path from "node:path";
import { KvparkError } from "../../src/errors";
import type { PrefixCache } from "../../src/cache";
import { BACKLOG_SPACING_MS } from "../../src/cache/write-queue";
import type { LoadedModel } from "../../src/model/loader";
import {
  expectSameAsScratch,
  generate,
  openCache,
  prefill,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
} from "./helpers";

// Tiny preset: 512 bytes of KV per token, 4096 per block of 8.
const BLOCK_BYTES = 4096;

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

async function reopen(cache: PrefixCache, options: Parameters<typeof openCache>[1]): Promise<PrefixCache> {
  open.splice(open.indexOf(cache), 1);
  await cache.close();
  return track(openCache(model, options));
}

const tokens = (seed: number, n: number) => randomTokens(seed, n, model.config.vocabSize);

/** Bytes the files of a directory occupy, each rounded up to 4 KiB as the store counts them. */
function dirBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .reduce((n, f) => n + Math.ceil(fs.statSync(path.join(dir, f)).size / 4096) * 4096, 0);
}

describe("SSD write queue and admission", () => {
  it("drains as fast as engine steps fill it, however many batches a step queues", async () => {
    // One block per write batch, and steps that each queue six blocks and then yield once, as the
    // engine does between steps while a prefill hands over its blocks as it goes (keepPace): the
    // pump must write a step's six batches in one turn.
    const cache = await track(
      openCache(model, { ssdDir: tempDir("ssd"), writeBatchBytesMax: BLOCK_BYTES, writeQueueBlocksMax: 16 }),
    );
    for (let step = 0; step < 12; step++) {
      const prompt = tokens(100 + step, 48);
      expect(cache.persist("t", prompt, prefill(model, prompt), { keepPace: true }).queuedToSsd).toBe(6);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await cache.flush();
    expect(cache.stats()).toMatchObject({ writeSkips: 0, ssd: { blocks: 72 } });
  });

  it("lets the engine step between the batches of a finished request's blocks", async () => {
    // A finished request's six blocks, queued at once, one block per batch: a step that comes
    // meanwhile (a new request's) must wait for one batch to be encoded, not for all six.
    const cache = await track(
      openCache(model, { ssdDir: tempDir("ssd"), writeBatchBytesMax: BLOCK_BYTES, writeQueueBlocksMax: 16 }),
    );
    const prompt = tokens(300, 48);
    expect(cache.persist("t", prompt, prefill(model, prompt)).queuedToSsd).toBe(6);
    const depths: number[] = [];
    let probing = true;
    const step = () => {
      if (!probing) return;
      depths.push(cache.stats().writeQueueDepth);
      setImmediate(step);
    };
    setImmediate(step);
    await cache.flush();
    probing = false;
    expect(depths).toEqual(expect.arrayContaining([5, 4, 3, 2, 1]));
    expect(cache.stats()).toMatchObject({ writeSkips: 0, ssd: { blocks: 6 } });
  });

  it("stands aside while a request waits for its first token, a batch per spacing, then drains", async () => {
    const cache = await track(
      openCache(model, { ssdDir: tempDir("ssd"), writeBatchBytesMax: BLOCK_BYTES, writeQueueBlocksMax: 16 }),
    );
    let waiting = true;
    cache.deferWritesWhile(() => waiting);
    const prompt = tokens(301, 48);
    expect(cache.persist("t", prompt, prefill(model, prompt)).queuedToSsd).toBe(6);
    // One batch at once, then one per BACKLOG_SPACING_MS (250 ms) while the request waits.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(cache.stats().writeQueueDepth).toBe(5);
    await new Promise((resolve) => setTimeout(resolve, BACKLOG_SPACING_MS + 50));
    expect(cache.stats().writeQueueDepth).toBe(4);
    // Its first token: the rest goes a batch per turn.
    waiting = false;
    await cache.flush();
    expect(cache.stats()).toMatchObject({ writeSkips: 0, writeQueueDepth: 0, ssd: { blocks: 6 } });
  });

  it("does not hold up a flush (Evict, Clear, close) behind a request's first token", async () => {
    const cache = await track(
      openCache(model, { ssdDir: tempDir("ssd"), writeBatchBytesMax: BLOCK_BYTES, writeQueueBlocksMax: 16 }),
    );
    cache.deferWritesWhile(() => true);
    const prompt = tokens(303, 48);
    expect(cache.persist("t", prompt, prefill(model, prompt)).queuedToSsd).toBe(6);
    // Standing aside, the five batches after the first would take at least 5 x 250 ms.
    const t0 = performance.now();
    await cache.flush();
    expect(performance.now() - t0).toBeLessThan(4 * BACKLOG_SPACING_MS);
    expect(cache.stats()).toMatchObject({ writeQueueDepth: 0, ssd: { blocks: 6 } });
  });

  it("keeps pace with a prefill's blocks even while a request waits for its first token", async () => {
    const cache = await track(
      openCache(model, { ssdDir: tempDir("ssd"), writeBatchBytesMax: BLOCK_BYTES, writeQueueBlocksMax: 16 }),
    );
    cache.deferWritesWhile(() => true);
    const prompt = tokens(302, 48);
    expect(cache.persist("t", prompt, prefill(model, prompt), { keepPace: true }).queuedToSsd).toBe(6);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(cache.stats().writeQueueDepth).toBe(0);
  });

  it("a full write queue skips blocks and counts them, never silently", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), writeQueueBlocksMax: 2 }));
    const seq = prefill(model, tokens(1, 48));
    expect(cache.persist("t", tokens(1, 48), seq)).toEqual({
      blocksAdded: 6,
      blocksPromoted: 0,
      blocksPresent: 0,
      bytesAdded: 6 * BLOCK_BYTES,
      queuedToSsd: 2,
      ssdSkips: 4,
      ramRejects: 0,
    });
    expect(cache.stats()).toMatchObject({ writeQueueDepth: 2, writeSkips: 4 });
    await cache.flush();
    expect(cache.stats()).toMatchObject({ writeQueueDepth: 0, writeSkips: 4, ssd: { blocks: 2 } });
  });

  it('"reused" writes a block to SSD the second time a request persists it', async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), admission: "reused" }));
    const prompt = tokens(2, 48);
    const seq = prefill(model, prompt);
    expect(cache.persist("t", prompt, seq).queuedToSsd).toBe(0);
    expect(cache.persist("t", prompt, seq)).toMatchObject({ blocksPresent: 6, queuedToSsd: 6 });
    await cache.flush();
    expect(cache.stats().ssd.blocks).toBe(6);
  });

  it('"pinned" writes only pinned blocks', async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd"), admission: "pinned" }));
    const prompt = tokens(3, 48);
    expect(cache.persist("t", prompt, prefill(model, prompt)).queuedToSsd).toBe(0);
    const pinned = cache.pin("t", { tokens: prompt.slice(0, 20) }, { kind: "soft", ttlMs: 60_000 });
    expect(pinned).toEqual({
      pinnedBlocks: 3,
      missingKeys: [],
      hardPinnedBytes: 0,
      softPinnedBytes: 3 * BLOCK_BYTES,
      hardPinQuotaBytes: 1024 ** 3,
    });
    await cache.flush();
    expect(cache.stats()).toMatchObject({ ssd: { blocks: 3, pinnedBlocks: 3 }, ram: { pinnedBlocks: 3 } });
  });

  it("persist can leave out the partial tail and blocks before fromTokens", async () => {
    const cache = await track(openCache(model));
    const prompt = tokens(6, 45);
    const seq = prefill(model, prompt);
    expect(cache.persist("t", prompt, seq, { partialTail: false })).toMatchObject({ blocksAdded: 5 });
    expect(cache.persist("t", prompt, seq, { fromTokens: 40 })).toMatchObject({
      blocksAdded: 1,
      blocksPresent: 0,
    });
    expect(cache.persist("t", prompt, seq, { fromTokens: 17 })).toMatchObject({
      blocksAdded: 0,
      blocksPresent: 4,
    });
    expect(cache.lookup("t", prompt).blocks.map((b) => b.tokens)).toEqual([8, 8, 8, 8, 8, 5]);
  });

  it("persist=false stores nothing, and cached blocks are still used", async () => {
    const cache = await track(openCache(model, { ssdDir: tempDir("ssd") }));
    const prompt = tokens(4, 30);
    await generate(cache, model, "t", prompt);
    const run = await generate(cache, model, "t", [...prompt, ...tokens(5, 10)], 4, false);
    expect(run.report.restoredTokens).toBe(30);
    await cache.flush();
    expect(cache.stats().indexedBlocks).toBe(5); // the first request's 33 tokens only
  });
});

describe("write failures", () => {
  it("a batch that cannot be staged is counted, its blocks stay in RAM, and the cache recovers", async () => {
    const stagingDir = path.join(tempDir("staging"), "s");
    const ssdDir = tempDir("ssd");
    const cache = await track(openCache(model, { ssdDir, stagingDir }));
    const prompt = tokens(7, 48);
    cache.persist("t", prompt, prefill(model, prompt));
    // A file where the staging directory should be: the encoder cannot write its batch.
    fs.rmSync(stagingDir, { recursive: true });
    fs.writeFileSync(stagingDir, "");
    await cache.flush();
    expect(cache.stats()).toMatchObject({
      writeErrors: 6,
      writeSkips: 0,
      ssd: { blocks: 0 },
      ram: { blocks: 6 },
    });
    fs.rmSync(stagingDir);
    // The blocks are still served from RAM and written again the next time they are persisted.
    const run = await generate(cache, model, "t", prompt.slice(0, 45));
    expect(run.report).toMatchObject({ restoredTokens: 44, ramTokens: 44 });
    await cache.flush();
    expect(cache.stats()).toMatchObject({ writeErrors: 6, ssd: { blocks: 6 } });
  });
});

describe("budgets and pins", () => {
  it("the SSD tier's cap holds under a stream of writes; the newest prompt survives a restart", async () => {
    const ssdDir = tempDir("ssd");
    const options = {
      ssdDir,
      ssdSegmentBytes: 64 * 1024,
      ssdBytesMax: 256 * 1024,
      ramBytesMax: 16 * BLOCK_BYTES,
    };
    const cache = await track(openCache(model, options));
    const prompts = Array.from({ length: 30 }, (_, i) => tokens(1000 + i, 79));
    for (const prompt of prompts) {
      await generate(cache, model, "t", prompt, 2);
      await cache.flush();
      expect(cache.stats().ssd.bytes).toBeLessThanOrEqual(256 * 1024);
      expect(dirBytes(path.join(ssdDir, "blocks"))).toBeLessThanOrEqual(256 * 1024);
    }
    // 30 prompts x 10 blocks of about 5.3 KB stored: far more than fits.
    expect(cache.stats().ssd.evictions).toBeGreaterThan(100);
    const after = await reopen(cache, options);
    expect(after.lookup("t", prompts[0]).tokens).toBe(0);
    const last = await generate(after, model, "t", prompts[29], 2);
    expect(last.report).toMatchObject({ restoredTokens: 78, ssdTokens: 78 });
    expectSameAsScratch(model, prompts[29], last);
  });

  it("pinned blocks survive eviction pressure in RAM and on SSD", async () => {
    const ssdDir = tempDir("ssd");
    const options = {
      ssdDir,
      ssdSegmentBytes: 64 * 1024,
      ssdBytesMax: 256 * 1024,
      ramBytesMax: 16 * BLOCK_BYTES,
    };
    const cache = await track(openCache(model, options));
    const keep = tokens(50, 45);
    await generate(cache, model, "t", keep);
    await cache.flush();
    expect(cache.pin("t", { tokens: keep }, { kind: "hard" })).toEqual({
      pinnedBlocks: 6,
      missingKeys: [],
      hardPinnedBytes: 6 * BLOCK_BYTES,
      softPinnedBytes: 0,
      hardPinQuotaBytes: 1024 ** 3,
    });
    for (let i = 0; i < 20; i++) {
      await generate(cache, model, "t", tokens(2000 + i, 79), 2);
      await cache.flush();
    }
    expect(cache.stats().ram.bytes).toBeLessThanOrEqual(16 * BLOCK_BYTES);
    expect(cache.stats().ssd.evictions).toBeGreaterThan(50);
    expect(cache.lookup("t", keep)).toMatchObject({ tokens: 45, ramTokens: 45 });
    // The SSD copies were pinned too: after a restart (RAM empty) they are all there.
    const after = await reopen(cache, options);
    const run = await generate(after, model, "t", keep);
    expect(run.report).toMatchObject({ restoredTokens: 44, ssdTokens: 44 });
    expectSameAsScratch(model, keep, run);
  });

  it("a hard pin over the tenant's quota is refused whole", async () => {
    const cache = await track(openCache(model, { hardPinQuotaBytes: 5 * BLOCK_BYTES }));
    const prompt = tokens(60, 48);
    cache.persist("t", prompt, prefill(model, prompt));
    const keys = cache.lookup("t", prompt).blocks.map((b) => b.key);
    expect(keys.length).toBe(6);
    let error: unknown;
    try {
      cache.pin("t", { keys }, { kind: "hard" });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(KvparkError);
    expect(error).toMatchObject({
      code: "RESOURCE_EXHAUSTED",
      message: "hard pin of 24576 bytes would exceed the tenant's quota: 0 of 20480 bytes pinned",
    });
    expect(cache.stats().ram.pinnedBlocks).toBe(0);
    expect(cache.pin("t", { keys: keys.slice(0, 5) }, { kind: "hard" }).hardPinnedBytes).toBe(
      5 * BLOCK_BYTES,
    );
    // Quotas are per tenant, and other tenants' keys are not theirs to pin.
    expect(cache.pin("u", { keys: keys.slice(5) }, { kind: "hard" })).toEqual({
      pinnedBlocks: 0,
      missingKeys: keys.slice(5),
      hardPinnedBytes: 0,
      softPinnedBytes: 0,
      hardPinQuotaBytes: 5 * BLOCK_BYTES,
    });
    expect(cache.unpin("t", { keys })).toEqual({ unpinnedBlocks: 5 });
    expect(cache.pin("t", { keys: [] }, { kind: "hard" }).hardPinnedBytes).toBe(0);
  });

  it("the RAM tier stays within its budget and reports the bytes it dropped for collection", async () => {
    const cache = await track(
      openCache(model, { ramBytesMax: 10 * BLOCK_BYTES, gcFreedBytesThreshold: 8 * BLOCK_BYTES }),
    );
    const calls: number[] = [];
    const saved = (globalThis as { gc?: () => void }).gc;
    (globalThis as { gc?: () => void }).gc = () => calls.push(1);
    try {
      const a = tokens(70, 48);
      cache.persist("t", a, prefill(model, a));
      expect(cache.collectIfNeeded()).toBe(false);
      const b = tokens(71, 48);
      cache.persist("t", b, prefill(model, b)); // 12 blocks of room 10: 2 of a's evicted
      expect(cache.stats().ram).toMatchObject({ bytes: 10 * BLOCK_BYTES, blocks: 10, evictions: 2 });
      expect(cache.collectIfNeeded()).toBe(false);
      const c = tokens(72, 48);
      cache.persist("t", c, prefill(model, c)); // 6 more evicted: 8 blocks dropped in all
      expect(cache.collectIfNeeded()).toBe(true);
      expect(calls.length).toBe(1);
      expect(cache.collectIfNeeded()).toBe(false);
    } finally {
      (globalThis as { gc?: () => void }).gc = saved;
    }
  });
});

describe("tenants", () => {
  it("the same prompt of another tenant misses in RAM and on SSD", async () => {
    const ssdDir = tempDir("ssd");
    const cache = await track(openCache(model, { ssdDir }));
    const prompt = tokens(80, 45);
    await generate(cache, model, "a", prompt);
    expect(cache.lookup("a", prompt)).toMatchObject({ tokens: 45, ramTokens: 45 });
    expect(cache.lookup("b", prompt)).toMatchObject({ tokens: 0, ramTokens: 0, ssdTokens: 0 });
    const keys = cache.lookup("a", prompt).blocks.map((b) => b.key);
    const seen = [];
    for await (const r of cache.getBlocks("b", keys)) seen.push("block" in r ? "block" : r.error.code);
    expect(seen).toEqual(Array(6).fill("NOT_FOUND"));

    const after = await reopen(cache, { ssdDir });
    expect(after.lookup("b", prompt)).toMatchObject({ tokens: 0, ssdTokens: 0 });
    expect(after.lookup("a", prompt)).toMatchObject({ tokens: 45, ssdTokens: 45 });
    const other = await generate(after, model, "b", prompt);
    expect(other.report.restoredTokens).toBe(0);
    // Misses: b before and during its request; a found all 6 blocks.
    expect(after.stats().ssd).toMatchObject({ hits: 6, misses: 2 });
  });
});

describe("restart", () => {
  it("without its chain log the SSD tier rebuilds the index from the stored blocks", async () => {
    const ssdDir = tempDir("ssd");
    const cache = await track(openCache(model, { ssdDir }));
    const prompt = tokens(90, 60);
    await generate(cache, model, "t", prompt);
    const after = await reopen(cache, { ssdDir });
    expect(after.stats()).toMatchObject({ ssdIndexSource: "log", indexedBlocks: 8 });
    fs.rmSync(path.join(ssdDir, "chain.log"));
    const rebuilt = await reopen(after, { ssdDir });
    expect(rebuilt.stats()).toMatchObject({ ssdIndexSource: "scan", indexedBlocks: 8 });
    const run = await generate(rebuilt, model, "t", prompt);
    expect(run.report).toMatchObject({ restoredTokens: 59, ssdTokens: 59 });
    expectSameAsScratch(model, prompt, run);
  });
});

describe("cost model", () => {
  it("recomputes the SSD part when the measured prefill rate says that is faster, else restores", async () => {
    const ssdDir = tempDir("ssd");
    const first = await track(openCache(model, { ssdDir }));
    const prompt = tokens(95, 45);
    await generate(first, model, "t", prompt);
    const cache = await reopen(first, { ssdDir, costModel: true });

    cache.observePrefill(1_000_000, 1); // a billion tokens per second: nothing restores faster
    const fast = await generate(cache, model, "t", prompt);
    expect(fast.report).toMatchObject({ restoredTokens: 0, ssdTokens: 0, recomputeChosenTokens: 44 });
    expect(fast.report.estimatedRecomputeMs).toBeLessThan(fast.report.estimatedRestoreMs);
    expectSameAsScratch(model, prompt, fast);
    expect(cache.stats().recomputeChosenTokens).toBe(44);

    const slowCache = await reopen(cache, { ssdDir, costModel: true, prefillTokensPerSecondPrior: 1 });
    const slow = await generate(slowCache, model, "t", prompt);
    expect(slow.report).toMatchObject({ restoredTokens: 44, ssdTokens: 44, recomputeChosenTokens: 0 });
    expect(slow.report.estimatedRecomputeMs).toBe(44_000);
    expectSameAsScratch(model, prompt, slow);
  });
});
