import { Redis } from "ioredis";
import { blockDataBytes } from "../../src/cache/block-codec";
import type { PrefixCache, SharedTierOptions } from "../../src/cache";
import { CHILDREN_READ_MAX } from "../../src/cache/shared-tier";
import type { LoadedModel } from "../../src/model/loader";
import { RedisServer, redisCli } from "../helpers/redis";
import {
  expectSameAsScratch,
  fromScratch,
  openCache,
  randomTokens,
  removeTempDirs,
  tinyModel,
  trackCaches,
} from "./helpers";

// The shared tier between two caches of one process and a real redis-server: round trips per
// lookup, logits equal to a computation from scratch, the TTL, the write queue's bound.

let model: LoadedModel;
let redis: RedisServer;
const caches = trackCaches();

beforeAll(async () => {
  model = await tinyModel();
  redis = await RedisServer.start();
});
afterAll(async () => {
  await redis?.stop();
  removeTempDirs();
});

const shared = (over: Partial<SharedTierOptions> = {}): SharedTierOptions => ({
  urls: [redis.url],
  cluster: false,
  timeoutMs: 2000,
  ttlSeconds: 600,
  admission: "all",
  writeQueueBlocksMax: 1024,
  writeQueueBytesMax: 1 << 30,
  restoreBatchBytesMax: 1 << 20,
  keyPrefix: `spec${Math.random().toString(36).slice(2, 8)}:`,
  ...over,
});

const tokens = (seed: number, n: number) => randomTokens(seed, n, model.config.vocabSize);

/** A Generate as the engine runs it, with the shared lookup; persists prompt and answer. */
async function generate(cache: PrefixCache, prompt: number[], steps = 4) {
  const match = await cache.lookupShared("t", prompt, { tokensMax: prompt.length - 1 });
  const sequence = model.newCache(prompt.length + steps);
  const report = await cache.restore(match, sequence);
  const want = fromScratch(model, prompt, steps);
  // Decode from what was restored, then compare with the computation from scratch.
  const logitsArray = model.forward(prompt.slice(sequence.offset), sequence);
  const logits = Float32Array.from(logitsArray.reshape([-1]).tolist() as number[]);
  expectSameAsScratch(model, prompt, { logits, tokens: want.tokens });
  cache.persist("t", prompt, sequence);
  return { match, report };
}

async function pair(a: Partial<SharedTierOptions> = {}, b: Partial<SharedTierOptions> = {}) {
  const prefix = shared().keyPrefix;
  const nodeA = await caches.track(
    openCache(model, { ssdDir: null, shared: shared({ keyPrefix: prefix, ...a }) }),
  );
  const nodeB = await caches.track(
    openCache(model, { ssdDir: null, shared: shared({ keyPrefix: prefix, ...b }) }),
  );
  return { nodeA, nodeB, prefix };
}

describe("shared tier (two caches, one redis-server)", () => {
  it("finds a 50-block chain in three round trips and restores it exactly", async () => {
    const { nodeA, nodeB } = await pair();
    // 49 whole blocks of 8 and a partial one of 5: the last prompt token is never matched.
    const prompt = tokens(1, 398);
    await generate(nodeA, prompt);
    await nodeA.flush();
    expect(nodeA.stats().shared).toMatchObject({ writtenBlocks: 50, writeErrors: 0, writeSkips: 0 });
    const before = nodeB.stats().shared!.requests;
    const { match, report } = await generate(nodeB, prompt);
    // Two batches of keys (32 + 17 blocks), then the last block's children: three round trips.
    expect(match).toMatchObject({ tokens: 397, sharedTokens: 397, ramTokens: 0 });
    expect(match.blocks.length).toBe(50);
    expect(report).toMatchObject({ restoredTokens: 397, sharedTokens: 397, corruptBlocks: 0, lostTokens: 0 });
    expect(report.batches.every((b) => b.tier === "shared")).toBe(true);
    const s = nodeB.stats().shared!;
    // The lookup's three, and the restore's reads: one round trip per batch of 1 MiB (256 blocks here).
    expect(s.requests - before).toBe(4);
    expect(s).toMatchObject({ hits: 50, readBlocks: 50, rejectedBlocks: 0, lostBlocks: 0 });
    // Promoted into RAM, and not written back by node B.
    const again = nodeB.lookup("t", prompt, { tokensMax: prompt.length - 1 });
    expect(again).toMatchObject({ ramTokens: 397, sharedTokens: 0 });
    await nodeB.flush();
    expect(nodeB.stats().shared!.writtenBlocks).toBe(0);
  });

  it("writes values with the TTL, and a read starts it again", async () => {
    const { nodeA, nodeB, prefix } = await pair({ ttlSeconds: 100 });
    const prompt = tokens(2, 40);
    await generate(nodeA, prompt);
    await nodeA.flush();
    const keys = redisCli(redis.port, "--scan", "--pattern", `${prefix}b:*`).split("\n");
    expect(keys.length).toBe(5);
    for (const key of keys) {
      const ttl = Number(redisCli(redis.port, "pttl", key));
      expect(ttl).toBeGreaterThan(90_000);
      expect(ttl).toBeLessThanOrEqual(100_000);
      redisCli(redis.port, "pexpire", key, "50000");
    }
    await generate(nodeB, prompt);
    for (const key of keys) expect(Number(redisCli(redis.port, "pttl", key))).toBeGreaterThan(90_000);
  });

  it("skips and counts writes beyond the queue's bound, and writes only reused blocks by default", async () => {
    const { nodeA } = await pair({ writeQueueBlocksMax: 2 });
    await generate(nodeA, tokens(3, 80));
    await nodeA.flush();
    expect(nodeA.stats().shared).toMatchObject({ writtenBlocks: 2, writeSkips: 8 });
    const reused = await caches.track(
      openCache(model, { ssdDir: null, shared: shared({ admission: "reused" }) }),
    );
    const prompt = tokens(4, 40);
    await generate(reused, prompt);
    await reused.flush();
    expect(reused.stats().shared!.writtenBlocks).toBe(0);
    await generate(reused, prompt);
    await reused.flush();
    expect(reused.stats().shared!.writtenBlocks).toBe(5);
  });

  it("ignores chain metadata whose tokens do not give the key it names", async () => {
    const { nodeA, nodeB, prefix } = await pair();
    // Node A: two whole blocks and a partial one of 4; node B's prompt differs in those last 4.
    const base = tokens(5, 20);
    const prompt = [...base.slice(0, 16), ...tokens(6, 4)];
    await generate(nodeA, base);
    await nodeA.flush();
    // The partial block is found through its parent's children; claim there that every child holds
    // node B's tokens 16..19, so that only the keys' check can tell.
    const client = new Redis({ port: redis.port, host: "127.0.0.1" });
    let forged = 0;
    try {
      const value = Buffer.alloc(4 * 4);
      for (let i = 0; i < 4; i++) value.writeUInt32LE(prompt[16 + i], i * 4);
      for (const hash of await client.keys(`${prefix}c:*`)) {
        for (const field of await client.hkeys(hash)) {
          await client.hset(hash, field, value);
          forged++;
        }
      }
    } finally {
      client.disconnect();
    }
    expect(forged).toBeGreaterThan(0);
    const { match } = await generate(nodeB, prompt);
    // The whole blocks by key; nothing through the forged metadata.
    expect(match).toMatchObject({ sharedTokens: 16, tokens: 16 });
  });
  it("searches a parent's children in full up to CHILDREN_READ_MAX of them", async () => {
    const { nodeA, nodeB, prefix } = await pair();
    // Two whole blocks of 8 and a partial one of 4 on node A; node B's lookup of the same prompt
    // finds the partial block only through its parent's children.
    const prompt = tokens(7, 20);
    await generate(nodeA, prompt);
    await nodeA.flush();
    const client = new Redis({ port: redis.port, host: "127.0.0.1" });
    try {
      // The partial block's parent: the hash whose child holds 4 token ids.
      let parentHash = "";
      for (const hash of await client.keys(`${prefix}c:*`)) {
        const values = Object.values(await client.hgetallBuffer(hash));
        if (values.some((v) => v.length === 16)) parentHash = hash;
      }
      expect(parentHash).not.toBe("");
      // Siblings whose first token differs from the prompt's: a random sample of 64 of these
      // 1,000 children (the old bound) holds the real one in 6.4% of lookups.
      const other = (prompt[16] + 1) % model.config.vocabSize;
      const siblings: Record<string, Buffer> = {};
      for (let i = 0; i < CHILDREN_READ_MAX - 24; i++) {
        const ids = Buffer.alloc(16);
        ids.writeUInt32LE(other, 0);
        ids.writeUInt32LE(i, 4);
        siblings[i.toString(16).padStart(64, "0")] = ids;
      }
      await client.hset(parentHash, siblings);
      expect(await client.hlen(parentHash)).toBe(CHILDREN_READ_MAX - 23);
    } finally {
      client.disconnect();
    }
    const { match, report } = await generate(nodeB, prompt);
    expect(match).toMatchObject({ tokens: 19, sharedTokens: 19 });
    expect(report).toMatchObject({ restoredTokens: 19, sharedTokens: 19 });
  });
});

describe("cost model with the shared tier", () => {
  it("recomputes rather than restore from a tier measured slow, and uses the rate it measured", async () => {
    const { nodeA, prefix } = await pair();
    const prompt = tokens(8, 40);
    await generate(nodeA, prompt);
    await nodeA.flush();
    const bytes = blockDataBytes(model, 39);
    const node = async (over: Parameters<typeof openCache>[1]) => {
      const cache = await caches.track(
        openCache(model, { ssdDir: null, shared: shared({ keyPrefix: prefix }), ...over }),
      );
      // A lookup before the client is connected skips the tier; wait for it.
      while (!cache.stats().shared!.connected) await new Promise((resolve) => setTimeout(resolve, 5));
      return cache;
    };

    // A tier of 1 KB/s against the default prefill rate: recomputing the 39 tokens wins.
    const slow = await node({ costModel: true, sharedRestoreBytesPerSecondPrior: 1000 });
    const lost = await generate(slow, prompt);
    expect(lost.match.sharedTokens).toBe(39);
    expect(lost.report).toMatchObject({ restoredTokens: 0, sharedTokens: 0, recomputeChosenTokens: 39 });
    expect(lost.report.estimatedRestoreMs).toBeCloseTo(bytes, 6);

    // A prefill of one token a second: the tier wins, and the restore measures the tier's rate.
    const fast = await node({ costModel: true, prefillTokensPerSecondPrior: 1 });
    const won = await generate(fast, prompt);
    expect(won.report).toMatchObject({ restoredTokens: 39, sharedTokens: 39, recomputeChosenTokens: 0 });
    expect(won.report.estimatedRestoreMs).toBeCloseTo(bytes / 200e3, 6);
    const measured = fast.stats().rates.sharedRestoreBytesPerSecond;
    expect(measured).not.toBe(200e6);
    // The next decision on this node is made with the rate it measured, not the prior: with a
    // prefill rate 5% above it (in tokens for the same bytes), recomputing wins.
    await fast.clear("t");
    const perMs = measured / 1000;
    const target = (1.05 * 39 * perMs) / bytes;
    fast.observePrefill(((target - 0.7 / 1000) / 0.3) * 1e6, 1e6);
    expect(fast.stats().rates.prefillTokensPerSecond).toBeCloseTo(target * 1000, 6);
    const recomputed = await generate(fast, prompt);
    expect(recomputed.match.sharedTokens).toBe(39);
    expect(recomputed.report).toMatchObject({ restoredTokens: 0, recomputeChosenTokens: 39 });
    expect(recomputed.report.estimatedRestoreMs).toBeCloseTo(bytes / perMs, 6);
  });
});
