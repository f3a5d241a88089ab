// Reopen of the SSD tier after a restart, for a store of many blocks, side by side in one run:
//   store, from INDEX      the native store's checkpointed index (a clean close)
//   store, replaying       INDEX deleted: every record header read back from the segments
//   tier, from chain.log   the SSD tier's whole open: store, key list, chain log checked against it
//   tier, full rebuild     chain.log deleted: every block read back from the store and indexed
// Blocks are small (a few tokens of a 2-layer model: about 1 KiB) because open cost grows with the
// number of blocks, not their size; a rebuild reads whole payloads, so with real blocks it costs
// the store's bytes over the disk's read rate on top of this.
import * as fs from "node:fs";
import * as path from "node:path";

import { blockKey, rootKey } from "../../src/cache/block-key";
import {
  encodePayloadHeader,
  makeHeader,
  storedEnvelope,
  type ModelShape,
} from "../../src/cache/block-codec";
import { ChainLog, type ChainRecord } from "../../src/cache/chain-log";
import { nodeFileIo } from "../../src/cache/file-io";
import { SsdTier } from "../../src/cache/ssd-tier";
import { openStore } from "../../src/store";
import type { Progress } from "../lib/util";

const MODEL: ModelShape = { fingerprint: "bench-reopen", numLayers: 2, kvHeads: 2, headDim: 8 };
const BLOCK_TOKENS = 4;
const CHAIN_BLOCKS = 16;
const SEGMENT_BYTES = 64 * 1024 * 1024;

export interface ReopenResult {
  blocks: number;
  storeBytes: number;
  runs: number;
  /** Milliseconds per run of each way to open. */
  storeFromIndexMs: number[];
  storeReplayMs: number[];
  tierFromLogMs: number[];
  tierRebuildMs: number[];
  table: string;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Writes `blocks` stored blocks in chains of CHAIN_BLOCKS, and the chain log describing them. */
async function build(dir: string, blocks: number): Promise<number> {
  const root = rootKey("bench", MODEL.fingerprint);
  const store = await openStore(path.join(dir, "blocks"), {
    bytesMax: 2 ** 40,
    fsync: "none",
    segmentBytes: SEGMENT_BYTES,
  });
  const records: ChainRecord[] = [];
  let batch: { key: Buffer; payload: Buffer }[] = [];
  let parent = root;
  for (let i = 0; i < blocks; i++) {
    if (i % CHAIN_BLOCKS === 0) parent = root;
    const tokens = Array.from({ length: BLOCK_TOKENS }, (_, t) => (i * BLOCK_TOKENS + t) % 50_000);
    const key = blockKey(parent, tokens, MODEL.fingerprint);
    const header = makeHeader(MODEL, key, parent === root ? Buffer.alloc(0) : parent, tokens);
    const data = Buffer.alloc(MODEL.numLayers * 2 * MODEL.kvHeads * BLOCK_TOKENS * MODEL.headDim * 4);
    const stored = Buffer.concat([storedEnvelope(root), encodePayloadHeader(header), data]);
    batch.push({ key, payload: stored });
    records.push({ key, parent, root, tokenIds: Uint32Array.from(tokens), storedBytes: stored.length });
    parent = key;
    if (batch.length === 5000) {
      await store.put(batch);
      batch = [];
    }
  }
  if (batch.length) await store.put(batch);
  const bytes = store.stats().bytes;
  await store.close();
  ChainLog.rewrite(path.join(dir, "chain.log"), records).close();
  return bytes;
}

async function openTier(dir: string): Promise<number> {
  const started = performance.now();
  const tier = await SsdTier.open(
    {
      dir,
      bytesMax: 2 ** 40,
      segmentBytes: SEGMENT_BYTES,
      fsync: "none",
      admission: "all",
      writeQueueBlocksMax: 0,
      writeQueueBytesMax: 0,
      writeBatchBytesMax: 1,
      fingerprint: MODEL.fingerprint,
    },
    () => [],
    { io: nodeFileIo, log: () => undefined, nowMs: () => Date.now() },
  );
  const ms = performance.now() - started;
  if (tier.records.size === 0) throw new Error("reopen bench: the tier found no blocks");
  await tier.close();
  return ms;
}

async function openStoreMs(dir: string): Promise<number> {
  const store = await openStore(path.join(dir, "blocks"), {
    bytesMax: 2 ** 40,
    fsync: "none",
    segmentBytes: SEGMENT_BYTES,
  });
  const ms = store.stats().openMs;
  await store.close();
  return ms;
}

/** Builds the store once, then opens it each way `runs` times. */
export async function runReopen(o: {
  blocks: number;
  runs: number;
  dir: string;
  progress: Progress;
}): Promise<ReopenResult> {
  const dir = fs.mkdtempSync(path.join(o.dir, "reopen-"));
  try {
    o.progress.log(`reopen: writing ${o.blocks} blocks`);
    const storeBytes = await build(dir, o.blocks);
    const r: ReopenResult = {
      blocks: o.blocks,
      storeBytes,
      runs: o.runs,
      storeFromIndexMs: [],
      storeReplayMs: [],
      tierFromLogMs: [],
      tierRebuildMs: [],
      table: "",
    };
    for (let run = 0; run < o.runs; run++) {
      o.progress.log(`reopen: run ${run + 1} of ${o.runs}`);
      r.storeFromIndexMs.push(await openStoreMs(dir));
      r.tierFromLogMs.push(await openTier(dir));
      // Each open writes INDEX (and the tier chain.log) again at close; delete them before the next.
      fs.rmSync(path.join(dir, "chain.log"));
      r.tierRebuildMs.push(await openTier(dir));
      fs.rmSync(path.join(dir, "blocks", "INDEX"));
      r.storeReplayMs.push(await openStoreMs(dir));
    }
    const row = (name: string, ms: number[]) =>
      `| ${name} | ${median(ms).toFixed(0)} ms | ${((median(ms) * 1000) / o.blocks).toFixed(1)} µs |`;
    r.table = [
      `${o.blocks} blocks (${(storeBytes / 1e6).toFixed(0)} MB), median of ${o.runs} runs:`,
      "",
      "| open | time | per block |",
      "| --- | ---: | ---: |",
      row("store, from its INDEX", r.storeFromIndexMs),
      row("store, replaying every record (INDEX deleted)", r.storeReplayMs),
      row("SSD tier, from chain.log", r.tierFromLogMs),
      row("SSD tier, rebuilt from the store (chain.log deleted)", r.tierRebuildMs),
    ].join("\n");
    return r;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
