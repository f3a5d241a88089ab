import { Redis } from "ioredis";
import type { PrefixCache, SharedTierOptions } from "../../src/cache";
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
});
