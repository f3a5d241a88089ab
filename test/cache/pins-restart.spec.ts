import { spawn } from "node:child_process";
import * as path from "node:path";
import { PrefixCache, type CacheOptions } from "../../src/cache";
import { loadConfig } from "../../src/config";
import { PinKind } from "../../gen/kvpark/v1/common_pb";
import type { LoadedModel } from "../../src/model/loader";
import { pinHint } from "../../src/rpc/validation";
import { resolveCacheOptions } from "../../src/cache/config";
import { PIN_SHAPE, PIN_TENANT, PIN_TOKENS } from "./children/pin-writer";
import { faultyIo } from "./faulty-io";
import {
  childEnv,
  expectSameAsScratch,
  generate,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
  trackCaches,
  transpileForChild,
} from "./helpers";

// Tiny preset: 512 bytes of KV per token, 4096 per block of 8.
const B = 4096;

let model: LoadedModel;
const { track, close: closeTracked } = trackCaches();

beforeAll(async () => {
  model = await tinyModel();
});

afterAll(removeTempDirs);

const tokens = (seed: number, n = 45) => randomTokens(seed, n, model.config.vocabSize);

/** The tenant's pinned bytes, hard and soft, through a pin of nothing. */
function usage(cache: PrefixCache, tenant: string) {
  const { hardPinnedBytes, softPinnedBytes } = cache.pin(tenant, { keys: [] }, { kind: "hard" });
  return { hardPinnedBytes, softPinnedBytes };
}

describe("pins across a restart", () => {
  it("hard and soft pins come back: the soft one until its absolute expiry, both against the quota and protecting RAM", async () => {
    const ssdDir = tempDir("ssd");
    const clock = { ms: 1_700_000_000_000 };
    const options: Partial<CacheOptions> = { ssdDir, ramBytesMax: 16 * B, hardPinQuotaBytes: 14 * B };
    const seams = { nowMs: () => clock.ms };
    let cache = await track(openCache(model, options, seams));
    const hard = tokens(1);
    const soft = tokens(2);
    await generate(cache, model, "t", hard);
    await generate(cache, model, "t", soft);
    await cache.flush();
    expect(cache.pin("t", { tokens: hard }, { kind: "hard" }).pinnedBlocks).toBe(6);
    expect(cache.pin("t", { tokens: soft }, { kind: "soft", ttlMs: 60_000 })).toMatchObject({
      pinnedBlocks: 6,
      hardPinnedBytes: 6 * B,
      softPinnedBytes: 6 * B,
    });
    await closeTracked(cache);

    // 30 s later: both pins are back, counted against the quota, on SSD.
    clock.ms += 30_000;
    cache = await track(openCache(model, options, seams));
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 6 * B, softPinnedBytes: 6 * B });
    expect(cache.stats("t").ssd.pinnedBlocks).toBe(12);
    expect(cache.stats().ssd.pinnedBlocks).toBe(12); // the store's own count: it was told again
    const other = tokens(3);
    await generate(cache, model, "t", other);
    expect(() => cache.pin("t", { tokens: other }, { kind: "hard" })).toThrow(
      expect.objectContaining({
        code: "RESOURCE_EXHAUSTED",
        message: `hard pin of ${6 * B} bytes would exceed the tenant's quota: ${12 * B} of ${14 * B} bytes pinned`,
      }),
    );
    // Restored into RAM, the pinned blocks stay there under pressure (16 blocks of room, 12 pinned).
    for (const prompt of [hard, soft]) {
      const run = await generate(cache, model, "t", prompt);
      expect(run.report).toMatchObject({ restoredTokens: 44, ssdTokens: 44 });
      expectSameAsScratch(model, prompt, run);
    }
    for (let i = 0; i < 4; i++) await generate(cache, model, "t", tokens(100 + i), 2);
    expect(cache.lookup("t", hard)).toMatchObject({ tokens: 45, ramTokens: 45 });
    expect(cache.lookup("t", soft)).toMatchObject({ tokens: 45, ramTokens: 45 });
    expect(cache.stats("t").ram.pinnedBlocks).toBe(12);

    // The soft pin ends 60 s after it was made, not 60 s after the restart.
    clock.ms += 30_001;
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 6 * B, softPinnedBytes: 0 });
    expect(cache.stats("t").ram.pinnedBlocks).toBe(6);
    await closeTracked(cache);
    cache = await track(openCache(model, options, seams));
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 6 * B, softPinnedBytes: 0 });
    expect(cache.stats("t").ssd.pinnedBlocks).toBe(6);
  });

  it("an unpin comes back too, in the cache and in the store", async () => {
    const ssdDir = tempDir("ssd");
    let cache = await track(openCache(model, { ssdDir }));
    const prompt = tokens(4);
    await generate(cache, model, "t", prompt);
    await cache.flush();
    cache.pin("t", { tokens: prompt }, { kind: "hard" });
    await closeTracked(cache);
    cache = await track(openCache(model, { ssdDir }));
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 6 * B, softPinnedBytes: 0 });
    expect(cache.unpin("t", { tokens: prompt })).toEqual({ unpinnedBlocks: 6 });
    await closeTracked(cache);
    cache = await track(openCache(model, { ssdDir }));
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 0, softPinnedBytes: 0 });
    expect(cache.stats().ssd.pinnedBlocks).toBe(0);
  });

  it("a pin made while the disk is full holds, and is written once space is back", async () => {
    const ssdDir = tempDir("ssd");
    const { io, fault } = faultyIo();
    let cache = await track(openCache(model, { ssdDir }, { fileIo: io }));
    const prompt = tokens(5);
    await generate(cache, model, "t", prompt);
    await cache.flush();
    Object.assign(fault, { code: "ENOSPC", file: "pins.log" });
    expect(cache.pin("t", { tokens: prompt }, { kind: "hard" }).hardPinnedBytes).toBe(6 * B);
    expect(cache.stats()).toMatchObject({ writeErrors: 1, writeErrorsEnospc: 1 });
    fault.code = null;
    await closeTracked(cache);
    cache = await track(openCache(model, { ssdDir }));
    expect(usage(cache, "t")).toEqual({ hardPinnedBytes: 6 * B, softPinnedBytes: 0 });
  });

  it("a pin made just before a kill -9 (no store checkpoint since) survives it", async () => {
    const ssdDir = tempDir("ssd");
    const script = transpileForChild(tempDir("child"), "pin-writer");
    const child = spawn(process.execPath, [script, ssdDir, path.join(tempDir("staging"), "s")], {
      env: childEnv(),
      stdio: ["ignore", "pipe", "inherit"],
    });
    const pinned = await new Promise<number>((resolve, reject) => {
      child.stdout.once("data", (chunk: Buffer) => {
        resolve((JSON.parse(chunk.toString("utf8")) as { pinned: number }).pinned);
        child.kill("SIGKILL");
      });
      child.on("error", reject);
    });
    await new Promise((resolve) => child.once("exit", resolve));
    expect(pinned).toBe(5);
    const cache = await track(
      PrefixCache.open(PIN_SHAPE, {
        blockTokens: 8,
        ssdDir,
        stagingDir: path.join(tempDir("staging"), "s"),
        ssdSegmentBytes: 1024 * 1024,
        ssdBytesMax: 256 * 1024 * 1024,
      }),
    );
    const blockBytes = 2 * 2 * 2 * 8 * 16 * 4;
    expect(usage(cache, PIN_TENANT)).toEqual({ hardPinnedBytes: 5 * blockBytes, softPinnedBytes: 0 });
    // The store was told again: its own count of pinned blocks.
    expect(cache.stats().ssd.pinnedBlocks).toBe(5);
    const keys = cache.lookup(
      PIN_TENANT,
      Array.from({ length: PIN_TOKENS }, (_, k) => 5 + k),
    ).blocks;
    expect(keys.length).toBe(5);
  });
});

describe("soft pin limits", () => {
  it("a soft pin longer than --soft-pin-ttl-max-seconds is refused with INVALID_ARGUMENT naming the flag", async () => {
    const config = loadConfig(["--soft-pin-ttl-max-seconds", "3600"], {});
    expect(() => pinHint(PinKind.SOFT, 3601, { kind: "kind", ttl: "ttl_seconds" }, config)).toThrow(
      expect.objectContaining({
        code: "INVALID_ARGUMENT",
        message:
          "ttl_seconds: 3601 s exceeds the longest soft pin allowed, 3600 s (--soft-pin-ttl-max-seconds)",
      }),
    );
    expect(pinHint(PinKind.SOFT, 3600, { kind: "kind", ttl: "ttl_seconds" }, config)).toEqual({
      kind: "soft",
      ttlMs: 3_600_000,
    });
    // Today's unbounded case: 2^32 - 1 seconds.
    expect(() =>
      pinHint(PinKind.SOFT, 2 ** 32 - 1, { kind: "kind", ttl: "ttl_seconds" }, loadConfig([], {})),
    ).toThrow(expect.objectContaining({ code: "INVALID_ARGUMENT" }));
    // The cache refuses it too, whoever calls it.
    const cache = await track(openCache(model, { softPinTtlMsMax: 3_600_000 }));
    const prompt = tokens(6);
    await generate(cache, model, "t", prompt);
    expect(() => cache.pin("t", { tokens: prompt }, { kind: "soft", ttlMs: 3_600_001 })).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT" }),
    );
    expect(cache.stats("t").ram.pinnedBlocks).toBe(0);
  });

  it("the default time to live may not exceed the maximum", () => {
    expect(() =>
      loadConfig(["--soft-pin-ttl-seconds", "7200", "--soft-pin-ttl-max-seconds", "3600"], {}),
    ).toThrow("--soft-pin-ttl-seconds (7200) exceeds --soft-pin-ttl-max-seconds (3600)");
    expect(() => resolveCacheOptions({ softPinTtlMsDefault: 7_200_000, softPinTtlMsMax: 3_600_000 })).toThrow(
      RangeError,
    );
    expect(loadConfig([], {}).softPinTtlMaxSeconds).toBe(86_400);
  });
});

describe("stats per tenant", () => {
  it("count only the tenant's blocks in each tier, and its own lookups; without a tenant, the server's", async () => {
    const ssdDir = tempDir("ssd");
    const cache = await track(openCache(model, { ssdDir }));
    const a1 = tokens(10);
    const a2 = tokens(11);
    const b1 = tokens(12);
    await generate(cache, model, "a", a1);
    await generate(cache, model, "a", a2);
    await generate(cache, model, "b", b1);
    await cache.flush();
    cache.pin("a", { tokens: a1 }, { kind: "hard" });
    cache.lookup("a", a1);
    cache.lookup("b", tokens(13));

    const a = cache.stats("a");
    const b = cache.stats("b");
    const all = cache.stats();
    expect(a.ram).toMatchObject({ bytes: 12 * B, blocks: 12, pinnedBlocks: 6 });
    expect(a.ssd).toMatchObject({ blocks: 12, pinnedBlocks: 6 });
    expect(b.ram).toMatchObject({ bytes: 6 * B, blocks: 6, pinnedBlocks: 0 });
    expect(b.ssd).toMatchObject({ blocks: 6, pinnedBlocks: 0 });
    expect(all.ram).toMatchObject({ bytes: 18 * B, blocks: 18, pinnedBlocks: 6 });
    expect(all.ssd).toMatchObject({ blocks: 18, pinnedBlocks: 6 });
    expect([a.indexedBlocks, b.indexedBlocks, all.indexedBlocks]).toEqual([12, 6, 18]);
    // Stored bytes: the tenant's blocks, envelopes and payloads; the server's, the store's files.
    expect(a.ssd.bytes).toBeGreaterThan(12 * B);
    expect(a.ssd.bytes + b.ssd.bytes).toBeLessThanOrEqual(all.ssd.bytes);
    // Each generate looked up once (nothing cached yet: a miss); the pin by prompt and a's lookup
    // hit 6 blocks each, b's lookup missed.
    expect(a.ram).toMatchObject({ hits: 12, misses: 2 });
    expect(b.ram).toMatchObject({ hits: 0, misses: 2 });
    expect(all.ram).toMatchObject({ hits: 12, misses: 4 });
    // Limits stay the server's.
    expect(a.ram.bytesMax).toBe(all.ram.bytesMax);
    expect(cache.stats("nobody")).toMatchObject({
      ram: { bytes: 0, blocks: 0, pinnedBlocks: 0, hits: 0, misses: 0 },
      ssd: { bytes: 0, blocks: 0, pinnedBlocks: 0 },
      indexedBlocks: 0,
    });
  });
});
