// Cold restore benchmark for the SSD block store.
//
// Restores about 100 MB of KV blocks with the page cache dropped, three ways,
// in the same run and on the same disk:
//   store      one getMany() over all keys (parallel preads, checksums verified)
//   dd direct  `dd iflag=direct` over the store's segment files (same bytes, no checks)
//   fs files   one file per block, read with fs.promises.readFile in parallel, and
//              with readFileSync one after another (the oMLX-style layout)
// Blocks are 64 tokens of the qwen2.5-0.5b KV shape in float32:
// 24 layers x {K,V} x [1, 2, 64, 64] x 4 bytes = 1,572,864 bytes.
//
// Usage: npx tsc -p tsconfig.json && node dist/bench/store/restore.js [--runs 5] [--dir DIR] [--read-threads 8]
// `npm run bench` runs the same measurement through runStoreRestore().
import { execFileSync, spawnSync } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { openStore } from "../../src/store";

export interface Scenario {
  name: string;
  blockBytes: number;
  blocks: number;
}

const QWEN_LAYERS = 24;
const QWEN_KV_HEADS = 2;
const QWEN_HEAD_DIM = 64;
const BLOCK_TOKENS = 64;
const FLOAT32_BYTES = 4;
const QWEN_BLOCK_BYTES = QWEN_LAYERS * 2 * QWEN_KV_HEADS * BLOCK_TOKENS * QWEN_HEAD_DIM * FLOAT32_BYTES;
const TARGET_BYTES = 100e6;

const SCENARIOS: Scenario[] = [
  {
    name: "64-token block, all layers",
    blockBytes: QWEN_BLOCK_BYTES,
    blocks: Math.round(TARGET_BYTES / QWEN_BLOCK_BYTES),
  },
  // The same bytes split per layer: many small blocks, where file-per-block costs most.
  {
    name: "64-token block, one layer",
    blockBytes: QWEN_BLOCK_BYTES / QWEN_LAYERS,
    blocks: Math.round(TARGET_BYTES / (QWEN_BLOCK_BYTES / QWEN_LAYERS)),
  },
];

function argument(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

let coldCache = true;
function dropCaches(): void {
  execFileSync("sync");
  try {
    fs.writeFileSync("/proc/sys/vm/drop_caches", "3");
  } catch {
    coldCache = false; // not root: numbers below are warm-cache numbers
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function msSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

function fsyncFile(file: string, data: Buffer): void {
  const fd = fs.openSync(file, "w");
  fs.writeSync(fd, data);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
}

export interface Timings {
  storeMs: number;
  ddMs: number;
  filesParallelMs: number;
  filesSequentialMs: number;
}

export interface ScenarioResult {
  scenario: Scenario;
  totalBytes: number;
  storeWriteMs: number;
  filesWriteMs: number;
  runs: Timings[];
}

async function runScenario(
  root: string,
  scenario: Scenario,
  runs: number,
  readThreads: number,
): Promise<ScenarioResult> {
  const dir = fs.mkdtempSync(path.join(root, "kvpark-bench-"));
  const storeDir = path.join(dir, "store");
  const filesDir = path.join(dir, "files");
  fs.mkdirSync(filesDir);
  const keys = Array.from({ length: scenario.blocks }, (_, i) =>
    crypto.createHash("sha256").update(`b${i}`).digest(),
  );
  const payloads = keys.map((key) =>
    crypto
      .createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16))
      .update(Buffer.alloc(scenario.blockBytes)),
  );
  const totalBytes = scenario.blocks * scenario.blockBytes;
  const options = { bytesMax: 4 * totalBytes + (256 << 20), fsync: "batch" as const, readThreads };

  // Writes: the store commits in batches of 16 blocks with one fdatasync each;
  // the file-per-block layout needs one fdatasync per file (plus its directory).
  let store = await openStore(storeDir, options);
  let start = process.hrtime.bigint();
  for (let i = 0; i < keys.length; i += 16) {
    const results = await store.put(
      keys.slice(i, i + 16).map((key, j) => ({ key, payload: payloads[i + j] })),
    );
    if (results.some((r) => r !== "persisted")) throw new Error(`store write failed: ${results.join(",")}`);
  }
  const storeWriteMs = msSince(start);
  await store.close();
  start = process.hrtime.bigint();
  keys.forEach((key, i) => fsyncFile(path.join(filesDir, key.toString("hex")), payloads[i]));
  const filesWriteMs = msSince(start);

  const segments = fs
    .readdirSync(storeDir)
    .filter((name) => name.startsWith("seg-"))
    .map((name) => path.join(storeDir, name));
  const digest = (buffers: (Buffer | string)[]) => {
    const hash = crypto.createHash("sha256");
    for (const value of buffers) {
      if (!Buffer.isBuffer(value)) throw new Error(`restore failed: ${value}`);
      hash.update(value);
    }
    return hash.digest("hex");
  };
  const expected = digest(payloads);

  store = await openStore(storeDir, options);
  const timings: Timings[] = [];
  for (let run = 0; run < runs; run++) {
    dropCaches();
    start = process.hrtime.bigint();
    const restored = await store.getMany(keys);
    const storeMs = msSince(start);
    if (digest(restored) !== expected) throw new Error("store restored wrong bytes");
    restored.length = 0;

    dropCaches();
    start = process.hrtime.bigint();
    for (const segment of segments) {
      const dd = spawnSync("dd", [`if=${segment}`, "of=/dev/null", "bs=4M", "iflag=direct", "status=none"]);
      if (dd.status !== 0) throw new Error(`dd failed: ${dd.stderr.toString()}`);
    }
    const ddMs = msSince(start);

    dropCaches();
    start = process.hrtime.bigint();
    const parallel = await Promise.all(
      keys.map((key) => fs.promises.readFile(path.join(filesDir, key.toString("hex")))),
    );
    const filesParallelMs = msSince(start);
    if (digest(parallel) !== expected) throw new Error("file restore read wrong bytes");
    parallel.length = 0;

    dropCaches();
    start = process.hrtime.bigint();
    const sequential = keys.map((key) => fs.readFileSync(path.join(filesDir, key.toString("hex"))));
    const filesSequentialMs = msSince(start);
    if (digest(sequential) !== expected) throw new Error("file restore read wrong bytes");
    sequential.length = 0;

    timings.push({ storeMs, ddMs, filesParallelMs, filesSequentialMs });
  }
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
  return { scenario, totalBytes, storeWriteMs, filesWriteMs, runs: timings };
}

function mbPerS(bytes: number, ms: number): string {
  return (bytes / 1e6 / (ms / 1e3)).toFixed(0);
}

/** What runStoreRestore() measured. */
export interface StoreRestoreResult {
  coldCache: boolean;
  runs: number;
  readThreads: number;
  results: ScenarioResult[];
  /** The Markdown table of the results. */
  table: string;
}

export interface StoreRestoreOptions {
  runs: number;
  /** A directory on the disk to measure (not a tmpfs). */
  dir: string;
  readThreads: number;
  /** Bytes per scenario (default about 100 MB). */
  targetBytes?: number;
  log?: (message: string) => void;
}

export async function runStoreRestore(o: StoreRestoreOptions): Promise<StoreRestoreResult> {
  const results: ScenarioResult[] = [];
  const target = o.targetBytes ?? TARGET_BYTES;
  for (const base of SCENARIOS) {
    const scenario = { ...base, blocks: Math.max(1, Math.round((base.blocks * target) / TARGET_BYTES)) };
    o.log?.(
      `store: ${scenario.blocks} blocks of ${(scenario.blockBytes / 1024).toFixed(0)} KiB (${scenario.name})`,
    );
    results.push(await runScenario(o.dir, scenario, o.runs, o.readThreads));
  }
  const lines = [
    "| blocks | bytes | store getMany | dd iflag=direct | fs files, parallel | fs files, sequential | store / dd time | store write | files write |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const r of results) {
    const m = (pick: (t: Timings) => number) => median(r.runs.map(pick));
    const storeMs = m((t) => t.storeMs);
    const ddMs = m((t) => t.ddMs);
    const par = m((t) => t.filesParallelMs);
    const seq = m((t) => t.filesSequentialMs);
    const ratio = median(r.runs.map((t) => t.storeMs / t.ddMs));
    lines.push(
      `| ${r.scenario.blocks} x ${(r.scenario.blockBytes / 1024).toFixed(0)} KiB (${r.scenario.name}) | ${(r.totalBytes / 1e6).toFixed(1)} MB | ` +
        `${storeMs.toFixed(0)} ms (${mbPerS(r.totalBytes, storeMs)} MB/s) | ${ddMs.toFixed(0)} ms (${mbPerS(r.totalBytes, ddMs)} MB/s) | ` +
        `${par.toFixed(0)} ms (${mbPerS(r.totalBytes, par)} MB/s) | ${seq.toFixed(0)} ms (${mbPerS(r.totalBytes, seq)} MB/s) | ` +
        `${ratio.toFixed(2)} | ${mbPerS(r.totalBytes, r.storeWriteMs)} MB/s | ${mbPerS(r.totalBytes, r.filesWriteMs)} MB/s |`,
    );
  }
  return { coldCache, runs: o.runs, readThreads: o.readThreads, results, table: lines.join("\n") };
}

async function main(): Promise<void> {
  const runs = Number(argument("runs", "5"));
  const root = argument("dir", os.tmpdir());
  const readThreads = Number(argument("read-threads", "8"));
  const r = await runStoreRestore({ runs, dir: root, readThreads });
  console.log(
    `Cold restore (${r.coldCache ? "page cache dropped before every read" : "WARM cache: not root"}), median of ${runs} runs, ${os.cpus().length} cores, store readThreads ${readThreads}`,
  );
  console.log();
  console.log(r.table);
  console.log();
  const { table: _table, ...json } = r;
  console.log(JSON.stringify(json, null, 2));
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
