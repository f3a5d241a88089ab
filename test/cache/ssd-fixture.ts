import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import type { CacheStats, PrefixCache } from "../../src/cache";
import type { LayerKV } from "../../src/model/kv-cache";
import type { LoadedModel } from "../../src/model/loader";
import { openStore } from "../../src/store";
import { generate, openCache, randomTokens } from "./helpers";

/** A sequence persisted to the SSD tier: the tokens its blocks cover and the KV they hold. */
export interface StoredSequence {
  tenant: string;
  tokens: number[];
  kv: LayerKV[];
}

/** The store options openCache gives the tier (helpers.ts), for opening the store alone. */
const STORE_OPTIONS = { bytesMax: 64 * 1024 * 1024, fsync: "none", segmentBytes: 1024 * 1024 } as const;

/**
 * Persists `count` prompts of 45 tokens (48 tokens of KV with the generated ones: 6 blocks of 8)
 * through `cache`, alternating tenants "t" and "u", waiting for each one's SSD writes.
 */
export async function persistSequences(
  cache: PrefixCache,
  model: LoadedModel,
  count: number,
  seed: number,
): Promise<StoredSequence[]> {
  const out: StoredSequence[] = [];
  for (let i = 0; i < count; i++) {
    const tenant = i % 2 === 0 ? "t" : "u";
    const prompt = randomTokens(seed + i, 45, model.config.vocabSize);
    const run = await generate(cache, model, tenant, prompt, 4);
    const n = run.sequence.offset;
    out.push({
      tenant,
      tokens: [...prompt, ...run.tokens].slice(0, n),
      kv: run.sequence.export(0, n) as LayerKV[],
    });
    // One write batch per sequence.
    await cache.flush();
  }
  return out;
}

/** The keys the store under `ssdDir` holds, in hex (the cache must not have it open). */
export async function storedKeys(ssdDir: string): Promise<string[]> {
  const store = await openStore(path.join(ssdDir, "blocks"), STORE_OPTIONS);
  const keys: string[] = [];
  try {
    for await (const key of store.keys()) keys.push(key.toString("hex"));
  } finally {
    await store.close();
  }
  return keys.sort();
}

/**
 * Blocks the store holds that the cache cannot find: every stored key is looked for in the
 * lookups of the sequences; then every sequence is restored whole from SSD and its KV must equal,
 * bit for bit, what was stored. Returns the number of stored blocks lookup did not find.
 */
export async function lostBlocks(
  cache: PrefixCache,
  model: LoadedModel,
  sequences: readonly StoredSequence[],
  keys: readonly string[],
): Promise<number> {
  const found = new Set<string>();
  for (const s of sequences)
    for (const b of cache.lookup(s.tenant, s.tokens).blocks) found.add(b.key.toString("hex"));
  const lost = keys.filter((k) => !found.has(k)).length;
  for (const s of sequences) {
    const match = cache.lookup(s.tenant, s.tokens);
    if (match.tokens !== s.tokens.length) continue; // counted above
    const sequence = model.newCache(s.tokens.length);
    const report = await cache.restore(match, sequence);
    expect(report).toMatchObject({ restoredTokens: s.tokens.length, corruptBlocks: 0, lostTokens: 0 });
    (sequence.export(0, s.tokens.length) as LayerKV[]).forEach((layer, i) => {
      expect(mx.all(mx.equal(layer.keys, s.kv[i].keys)).item()).toBe(true);
      expect(mx.all(mx.equal(layer.values, s.kv[i].values)).item()).toBe(true);
    });
  }
  return lost;
}

/** Opens the tier in `ssdDir` (with `open`, default openCache), counts the stored blocks it lost, closes it. */
export async function reopenAndCount(
  model: LoadedModel,
  ssdDir: string,
  sequences: readonly StoredSequence[],
  open: (ssdDir: string) => Promise<PrefixCache> = (dir) => openCache(model, { ssdDir: dir }),
): Promise<{ lost: number; stored: number; stats: CacheStats }> {
  const keys = await storedKeys(ssdDir);
  const cache = await open(ssdDir);
  try {
    const lost = await lostBlocks(cache, model, sequences, keys);
    return { lost, stored: keys.length, stats: cache.stats() };
  } finally {
    await cache.close();
  }
}

/** Byte ranges of the chain log's regions: file header, record length fields, bodies, checksums. */
export function chainLogRegions(
  file: string,
): Record<"header" | "lengths" | "bodies" | "checksums", [number, number][]> {
  const bytes = fs.readFileSync(file);
  const regions = {
    header: [[0, 16]] as [number, number][],
    lengths: [],
    bodies: [],
    checksums: [],
  } as Record<"header" | "lengths" | "bodies" | "checksums", [number, number][]>;
  for (let at = 16; at + 4 <= bytes.length;) {
    const body = bytes.readUInt32LE(at);
    regions.lengths.push([at, at + 4]);
    regions.bodies.push([at + 4, at + 4 + body]);
    regions.checksums.push([at + 4 + body, at + 12 + body]);
    at += 12 + body;
  }
  return regions;
}

/** Deterministic numbers in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Flips one bit of a file. */
export function flipBit(file: string, offset: number, bit: number): void {
  const bytes = fs.readFileSync(file);
  bytes[offset] ^= 1 << bit;
  fs.writeFileSync(file, bytes);
}
