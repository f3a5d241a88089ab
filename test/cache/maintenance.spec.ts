/**
 * The cache's operations by hand (src/cache/README.md, "Listing, eviction, bundles"): listing,
 * eviction from a tier (pinned blocks only with force, a block a restore holds included), clearing a
 * tenant, and bundles exported from one cache and imported into another, which then serves the
 * prompt as a hit with the logits computed from scratch. A refused bundle leaves nothing behind.
 */
import { core as mx } from "@frost-beta/mlx";
import type { PrefixCache } from "../../src/cache";
import { FIRST_BLOCK_KEY_MISMATCH } from "../../src/cache/block-verify";
import type { LoadedModel } from "../../src/model/loader";
import {
  fromScratch,
  generate,
  maxAbsDiff,
  openCache,
  randomTokens,
  removeTempDirs,
  tempDir,
  tinyModel,
  trackCaches,
} from "./helpers";

let model: LoadedModel;
const caches = trackCaches();

beforeAll(async () => {
  model = await tinyModel();
});
afterAll(() => removeTempDirs());

/** A cache with an SSD tier, blocks of 8 tokens. */
const open = () => caches.track(openCache(model, { ssdDir: tempDir("ssd") }));

/** The bundle of the tenant's blocks (or the selected ones), whole. */
async function exportAll(cache: PrefixCache, tenant: string, tokens?: number[]): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for await (const piece of cache.exportBundle(tenant, tokens && { tokens })) pieces.push(piece);
  return Buffer.concat(pieces);
}

/** `bytes` as pieces of `size` bytes. */
async function* inPieces(bytes: Buffer, size = 777): AsyncGenerator<Buffer> {
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

/** The logits of the prompt's last token with the sequence restored from `cache`. */
async function restoredLogits(cache: PrefixCache, tenant: string, prompt: number[]) {
  const match = cache.lookup(tenant, prompt, { tokensMax: prompt.length - 1 });
  const sequence = model.newCache(prompt.length + 1);
  const report = await cache.restore(match, sequence);
  const logits = model.forward(prompt.slice(sequence.offset), sequence);
  return { report, logits: Float32Array.from(logits.reshape([-1]).tolist() as number[]) };
}

const vocab = () => model.config.vocabSize;
/** Bytes of a full block of the tiny model: 2 layers x (keys, values) x 2 KV heads x 8 tokens x 16 x 4. */
const BLOCK_BYTES = 2 * 2 * 2 * 8 * 16 * 4;

describe("listing, eviction and clearing", () => {
  it("lists a tenant's blocks by key, a page at a time, with tiers, tokens, pins and last use", async () => {
    let now = 1_000_000;
    const cache = await caches.track(openCache(model, { ssdDir: tempDir("ssd") }, { nowMs: () => now }));
    const prompt = randomTokens(1, 20, vocab());
    await generate(cache, model, "a", prompt, 1); // blocks of 8, 8 and 4 (+1 generated)
    await generate(cache, model, "b", randomTokens(2, 10, vocab()), 1);
    await cache.flush();
    now = 2_000_000;
    const keys = cache.lookup("a", prompt).blocks.map((b) => b.key);
    cache.pin("a", { keys: [keys[0]] }, { kind: "hard" });
    cache.pin("a", { keys: [keys[1]] }, { kind: "soft", ttlMs: 5000 });
    const first = cache.listBlocks({ tenant: "a" }, { size: 2, after: "" });
    const second = cache.listBlocks({ tenant: "a" }, { size: 2, after: first.nextAfter });
    expect([first.total, first.blocks.length, second.blocks.length, second.nextAfter]).toEqual([3, 2, 1, ""]);
    const listed = [...first.blocks, ...second.blocks];
    const hex = listed.map((b) => b.key.toString("hex"));
    expect(hex).toEqual([...hex].sort());
    expect(new Set(hex)).toEqual(new Set(keys.map((k) => k.toString("hex"))));
    const byKey = (k: Buffer) => listed.find((b) => b.key.equals(k))!;
    expect(byKey(keys[0])).toMatchObject({
      parentKey: Buffer.alloc(0),
      tiers: ["ram", "ssd"],
      tokens: 8,
      bytes: BLOCK_BYTES,
      pin: { kind: "hard" },
      usedAtMs: 1_000_000,
    });
    expect(byKey(keys[0]).ssdBytes).toBeGreaterThan(byKey(keys[0]).bytes);
    expect(byKey(keys[1])).toMatchObject({ parentKey: keys[0], pin: { kind: "soft", untilMs: 2_005_000 } });
    expect(byKey(keys[2])).toMatchObject({ tokens: 4, pin: null });
    expect(byKey(keys[0]).tenant).toBeUndefined();
    // Every tenant's, named by the names given; an unnamed tenant's blocks have no name.
    const all = cache.listBlocks({ names: ["a"] }, { size: 100, after: "" });
    expect(all.total).toBe(5);
    expect(all.blocks.filter((b) => b.tenant === "a").length).toBe(3);
    expect(all.blocks.filter((b) => b.tenant === undefined).length).toBe(2);
  });

  it("evicts from one tier or both, skips pinned blocks unless forced, and counts what it removed", async () => {
    const cache = await open();
    const prompt = randomTokens(3, 24, vocab());
    await generate(cache, model, "a", prompt, 1);
    await cache.flush();
    const keys = cache.lookup("a", prompt).blocks.map((b) => b.key);
    cache.pin("a", { keys: [keys[0]] }, { kind: "hard" });

    const fromRam = await cache.evict("a", { tokens: prompt }, { tier: "ram", force: false });
    expect(fromRam).toMatchObject({
      evictedBlocks: 2,
      skippedPinnedBlocks: 1,
      missingKeys: [],
      ssdBytesFreed: 0,
    });
    expect(fromRam.ramBytesFreed).toBe(2 * BLOCK_BYTES);
    expect(cache.lookup("a", prompt)).toMatchObject({ tokens: 24, ramTokens: 8, ssdTokens: 16 });

    const missing = Buffer.alloc(32, 9);
    const both = await cache.evict("a", { keys: [...keys, missing] }, { tier: "both", force: false });
    expect(both).toMatchObject({
      evictedBlocks: 2,
      skippedPinnedBlocks: 1,
      missingKeys: [missing],
      ramBytesFreed: 0,
    });
    expect(both.ssdBytesFreed).toBeGreaterThan(0);
    expect(cache.lookup("a", prompt)).toMatchObject({ tokens: 8, ramTokens: 8 });

    const forced = await cache.evict("a", { keys: [keys[0]] }, { tier: "both", force: true });
    expect(forced).toMatchObject({ evictedBlocks: 1, skippedPinnedBlocks: 0 });
    expect(cache.lookup("a", prompt).tokens).toBe(0);
    // Its pin went with it: its bytes no longer count against the quota.
    expect(cache.pin("a", { keys: [] }, { kind: "hard" }).hardPinnedBytes).toBe(0);
    const stats = cache.stats("a");
    expect([stats.ram.blocks, stats.ssd.blocks, stats.ram.removed, stats.ssd.removed]).toEqual([0, 0, 3, 3]);
    expect([stats.ram.evictions, stats.ssd.evictions]).toEqual([0, 0]);
  });

  it("evicts blocks a restore is using: the restore completes, the blocks are gone after", async () => {
    const cache = await open();
    const prompt = randomTokens(4, 25, vocab());
    await generate(cache, model, "a", prompt, 1);
    await cache.flush();
    const keys = cache.lookup("a", prompt).blocks.map((b) => b.key);
    // The first block on SSD only, the rest in RAM: the restore holds RAM blocks while it reads SSD.
    await cache.evict("a", { keys: [keys[0]] }, { tier: "ram", force: false });
    const match = cache.lookup("a", prompt, { tokensMax: prompt.length - 1 });
    expect(match.blocks.map((b) => b.tier)).toEqual(["ssd", "ram", "ram"]);
    const sequence = model.newCache(prompt.length + 1);
    const restoring = cache.restore(match, sequence);
    const evicting = cache.evict("a", { tokens: prompt }, { tier: "both", force: true });
    const [report, evicted] = await Promise.all([restoring, evicting]);
    expect(evicted.evictedBlocks).toBe(4);
    expect(sequence.offset).toBe(report.restoredTokens);
    const logits = Float32Array.from(
      (model.forward(prompt.slice(sequence.offset), sequence) as mx.array).reshape([-1]).tolist() as number[],
    );
    expect(maxAbsDiff(logits, fromScratch(model, prompt, 1).logits)).toBeLessThanOrEqual(1e-4);
    expect(cache.lookup("a", prompt).tokens).toBe(0);
    expect(cache.stats("a")).toMatchObject({
      ram: { blocks: 0, bytes: 0 },
      ssd: { blocks: 0 },
      indexedBlocks: 0,
    });
  });

  it("clears one tenant's blocks, pinned ones too, and leaves another tenant's untouched", async () => {
    const cache = await open();
    const pa = randomTokens(5, 20, vocab());
    const pb = randomTokens(6, 20, vocab());
    await generate(cache, model, "a", pa, 1);
    await generate(cache, model, "b", pb, 1);
    cache.pin("a", { tokens: pa }, { kind: "hard" });
    const report = await cache.clear("a");
    expect(report).toMatchObject({ removedBlocks: 3, unpinnedBlocks: 3 });
    expect(report.ramBytesFreed).toBeGreaterThan(0);
    expect(cache.lookup("a", pa).tokens).toBe(0);
    expect(cache.lookup("b", pb).tokens).toBe(20);
    expect(cache.stats("a")).toMatchObject({ ram: { blocks: 0 }, ssd: { blocks: 0 }, indexedBlocks: 0 });
    expect(cache.stats("b")).toMatchObject({ ram: { blocks: 3 }, ssd: { blocks: 3 } });
    // No queued write lands after the clear.
    await cache.flush();
    expect(cache.stats("a").ssd.blocks).toBe(0);
    expect((await cache.clear()).removedBlocks).toBe(3);
    expect(cache.stats()).toMatchObject({ ram: { blocks: 0 }, ssd: { blocks: 0 }, indexedBlocks: 0 });
  });
});

describe("bundles", () => {
  it("move a tenant's blocks to another cache, which serves the prompt from them as computed from scratch", async () => {
    const source = await open();
    const prompt = randomTokens(7, 30, vocab());
    const other = randomTokens(8, 12, vocab());
    await generate(source, model, "a", prompt, 1);
    await generate(source, model, "a", other, 1);
    // Half the blocks in RAM only, the rest on SSD too: both kinds are exported.
    const bundle = await exportAll(source, "a");

    const target = await open();
    const report = await target.importBundle("a", inPieces(bundle));
    expect(report).toEqual({ blocks: 6, storedBlocks: 6, presentBlocks: 0, tokens: 30 + 12 });
    expect(target.lookup("a", prompt)).toMatchObject({ tokens: 30 });
    const { report: restore, logits } = await restoredLogits(target, "a", prompt);
    expect(restore.restoredTokens).toBe(29);
    expect(maxAbsDiff(logits, fromScratch(model, prompt, 1).logits)).toBeLessThanOrEqual(1e-4);
    // Importing again stores nothing twice.
    expect(await target.importBundle("a", inPieces(bundle, 5000))).toMatchObject({
      storedBlocks: 0,
      presentBlocks: 6,
    });
    // A selection: the chain to the chosen block, and nothing of the other prompt.
    const selected = await exportAll(source, "a", prompt.slice(0, 16));
    const fresh = await open();
    expect(await fresh.importBundle("a", inPieces(selected))).toMatchObject({ blocks: 2, storedBlocks: 2 });
    expect(fresh.lookup("a", other).tokens).toBe(0);
  });

  it("import only under the tenant that exported them, saying why", async () => {
    const source = await open();
    await generate(source, model, "a", randomTokens(9, 20, vocab()), 1);
    const bundle = await exportAll(source, "a");
    const target = await open();
    await expect(target.importBundle("b", inPieces(bundle))).rejects.toMatchObject({
      code: "KEY_MISMATCH",
      message: expect.stringMatching(/^bundle entry 1 \(block [0-9a-f]{16}…\): KEY_MISMATCH: /),
    });
    await expect(target.importBundle("b", inPieces(bundle))).rejects.toThrow(FIRST_BLOCK_KEY_MISMATCH);
    expect(target.stats()).toMatchObject({ indexedBlocks: 0, ram: { blocks: 0 }, ssd: { blocks: 0 } });
  });

  it("a damaged or truncated bundle is refused, and what the import had stored is removed again", async () => {
    const source = await open();
    const prompt = randomTokens(10, 40, vocab());
    await generate(source, model, "a", prompt, 1);
    const bundle = await exportAll(source, "a");
    const target = await open();
    const altered = Buffer.from(bundle);
    altered[bundle.length - 2000] ^= 1; // inside the last block's tensors (40 tokens: 5 blocks)
    await expect(target.importBundle("a", inPieces(altered))).rejects.toMatchObject({
      code: "KV_CORRUPT",
      message: expect.stringMatching(
        /^bundle entry 5 \(block [0-9a-f]{16}…\) is damaged: its checksum does not match$/,
      ),
    });
    await expect(
      target.importBundle("a", inPieces(bundle.subarray(0, bundle.length - 100))),
    ).rejects.toMatchObject({
      code: "KV_CORRUPT",
      message: expect.stringMatching(/^bundle is truncated in bundle entry 6: /),
    });
    await target.flush();
    const stats = target.stats();
    // Four blocks stored by the first import, five by the second, each removed again.
    expect([stats.indexedBlocks, stats.ram.blocks, stats.ssd.blocks, stats.ssd.removed]).toEqual([
      0, 0, 0, 9,
    ]);
    expect(target.lookup("a", prompt).tokens).toBe(0);
  });
});
