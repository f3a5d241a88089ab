/**
 * The cache's own on-disk formats (src/cache/FORMAT.md), pinned by golden files that format version 1
 * wrote: two stored blocks (64-byte envelope, then the safetensors payload) and the chain log that
 * indexes them. Every later build must keep reading them, and this build must write them byte for byte.
 * The store's segment and index files around them have their own golden files (test/store/golden).
 *
 * Regenerate with UPDATE_GOLDEN=1 only when a version changes, into a new directory; the files of an
 * older version are never rewritten.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { PrefixCache, chainKeys, rootKey, type CacheOptions, type KVBlockRecord } from "../../src/cache";
import {
  BLOCK_FORMAT_VERSION,
  STORED_ENVELOPE_BYTES,
  STORED_ENVELOPE_VERSION,
  encodePayloadHeader,
  makeHeader,
  openEnvelope,
  storedEnvelope,
  toRecord,
  type ModelShape,
} from "../../src/cache/block-codec";
import { parseBlockPayload, verifyRecord } from "../../src/cache/block-verify";
import { CHAIN_LOG_VERSION, ChainLog, type ChainRecord } from "../../src/cache/chain-log";
import { nodeFileIo } from "../../src/cache/file-io";
import { PIN_LOG_VERSION, PinJournal, type PinRecord } from "../../src/cache/pin-log";
import { WriteErrors } from "../../src/cache/write-errors";
import { openStore, type StoreOptions } from "../../src/store";

const GOLDEN_V1 = path.join(__dirname, "golden", "v1");
const BLOCK_FILES = ["block-0.kvblk", "block-1.kvblk"];
const UPDATE = process.env.UPDATE_GOLDEN === "1";

// A made-up model: the formats only need its fingerprint and KV shape.
const MODEL: ModelShape = {
  fingerprint: crypto.createHash("sha256").update("kvpark golden model").digest("hex"),
  numLayers: 2,
  kvHeads: 2,
  headDim: 4,
};
const TENANT = "golden";
const BLOCK_TOKENS = 4;
// A full block and a shorter trailing one; 70000 needs all four bytes of a u32.
const TOKENS = [1, 300, 70000, 4, 5, 6, 7];
const ROOT = rootKey(TENANT, MODEL.fingerprint);
const LINKS = chainKeys(ROOT, TOKENS, BLOCK_TOKENS, MODEL.fingerprint);
// The pin journal of the golden blocks: the first hard-pinned, the second soft-pinned until PIN_UNTIL_MS.
const PIN_UNTIL_MS = 1_700_000_000_000;
const PINS: PinRecord[] = [
  { key: LINKS[0].key, hard: true, softUntilMs: 0 },
  { key: LINKS[1].key, hard: false, softUntilMs: PIN_UNTIL_MS },
];
const BEFORE_EXPIRY_MS = PIN_UNTIL_MS - 10_000;

/** Opens the pin journal `file` as the SSD tier does, every block stored, at BEFORE_EXPIRY_MS. */
function openPinJournal(file: string) {
  const nowMs = () => BEFORE_EXPIRY_MS;
  return PinJournal.open(file, () => true, {
    io: nodeFileIo,
    errors: new WriteErrors(() => {}, nowMs),
    nowMs,
    durable: false,
  });
}

/** A pin journal written as the tier writes one: created at open, then the pins appended one by one. */
function writePinJournal(file: string): void {
  const { journal } = openPinJournal(file);
  for (const pin of PINS) journal.record([pin]);
  journal.close();
}

/** Tensor values, exact in float32 and different in every block, layer, tensor and element. */
function tensor(block: number, layer: number, kind: "keys" | "values", tokens: number): Buffer {
  const n = MODEL.kvHeads * tokens * MODEL.headDim;
  const base = block * 1000 + layer * 100 + (kind === "values" ? 50 : 0);
  const values = Float32Array.from({ length: n }, (_, e) => ((e % 3 === 2 ? -1 : 1) * (base + e)) / 8);
  return Buffer.from(values.buffer);
}

/** Block `b` in its stored form, composed as the SSD tier composes it: envelope, payload header, tensors. */
function writeStoredBlock(b: number): Buffer {
  const link = LINKS[b];
  const tokenIds = TOKENS.slice(link.start, link.end);
  const parent = link.parent.equals(ROOT) ? Buffer.alloc(0) : link.parent;
  const pieces = [storedEnvelope(ROOT), encodePayloadHeader(makeHeader(MODEL, link.key, parent, tokenIds))];
  for (let i = 0; i < MODEL.numLayers; i++)
    for (const kind of ["keys", "values"] as const) pieces.push(tensor(b, i, kind, tokenIds.length));
  return Buffer.concat(pieces);
}

/** The chain log's record of block `b` stored as `stored` bytes. */
function chainRecord(b: number, stored: Buffer): ChainRecord {
  const link = LINKS[b];
  return {
    key: link.key,
    parent: link.parent,
    root: ROOT,
    tokenIds: Uint32Array.from(TOKENS.slice(link.start, link.end)),
    storedBytes: stored.length,
  };
}

const golden = (name: string) => fs.readFileSync(path.join(GOLDEN_V1, name));
const goldenBlocks = () => BLOCK_FILES.map(golden);
/** The wire record (proto KVBlock) of a stored golden block. */
function wireRecord(stored: Buffer): KVBlockRecord {
  const { payload } = openEnvelope(stored);
  return toRecord(parseBlockPayload(payload, MODEL).header, Buffer.from(payload));
}

const dirs: string[] = [];
function tempDir(label: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `kvpark-golden-${label}-`));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
});

const STORE_OPTIONS: StoreOptions = { bytesMax: 64 << 20, fsync: "none", segmentBytes: 1 << 20 };
const logLines: string[] = [];
function openCache(ssdDir: string, nowMs: () => number = Date.now): Promise<PrefixCache> {
  const options: Partial<CacheOptions> = {
    ssdDir,
    blockTokens: BLOCK_TOKENS,
    ssdFsync: "none",
    ssdBytesMax: STORE_OPTIONS.bytesMax,
    ssdSegmentBytes: STORE_OPTIONS.segmentBytes,
    costModel: false,
    stagingDir: path.join(tempDir("staging"), "s"),
  };
  return PrefixCache.open(MODEL, options, { log: (line) => logLines.push(line), nowMs });
}

/** An SSD tier directory holding the golden blocks in a fresh store, with `log` as its chain log. */
async function tierDir(blocks: Buffer[], log: Buffer | null): Promise<string> {
  const ssdDir = tempDir("tier");
  const store = await openStore(path.join(ssdDir, "blocks"), STORE_OPTIONS);
  expect(await store.put(blocks.map((payload, b) => ({ key: LINKS[b].key, payload })))).toEqual(
    blocks.map(() => "persisted"),
  );
  await store.close();
  if (log) fs.writeFileSync(path.join(ssdDir, "chain.log"), log);
  return ssdDir;
}

/** Every block of the golden prompt through GetBlocks: payloads, or error codes. */
async function fetchAll(cache: PrefixCache): Promise<(Buffer | string)[]> {
  const out: (Buffer | string)[] = [];
  for await (const r of cache.getBlocks(
    TENANT,
    LINKS.map((l) => l.key),
  ))
    out.push("block" in r ? r.block.payload : `${r.error.code}: ${r.error.message}`);
  return out;
}

/** Copy of `bytes` with `at` overwritten. */
function patched(bytes: Buffer, at: number, replacement: Buffer | number[]): Buffer {
  const out = Buffer.from(bytes);
  Buffer.from(replacement).copy(out, at);
  return out;
}

beforeAll(() => {
  if (!UPDATE) return;
  fs.mkdirSync(GOLDEN_V1, { recursive: true });
  const blocks = BLOCK_FILES.map((name, b) => {
    const stored = writeStoredBlock(b);
    fs.writeFileSync(path.join(GOLDEN_V1, name), stored);
    return stored;
  });
  ChainLog.rewrite(
    path.join(GOLDEN_V1, "chain.log"),
    blocks.map((stored, b) => chainRecord(b, stored)),
  ).close();
  writePinJournal(path.join(GOLDEN_V1, "pins.log"));
});

describe("cache formats, version 1", () => {
  it("are the versions this build writes and reads", () => {
    // Block format 2 is read and written for models with recurrent layers (golden-v2.spec.ts);
    // this model has none and writes version 1.
    expect([STORED_ENVELOPE_VERSION, BLOCK_FORMAT_VERSION, CHAIN_LOG_VERSION, PIN_LOG_VERSION]).toEqual([
      1, 2, 1, 1,
    ]);
    expect(STORED_ENVELOPE_BYTES).toBe(64);
  });

  it("writes stored blocks and the chain log byte for byte as the golden files record them", () => {
    const blocks = BLOCK_FILES.map((_, b) => writeStoredBlock(b));
    blocks.forEach((stored, b) =>
      expect([BLOCK_FILES[b], stored.equals(golden(BLOCK_FILES[b]))]).toEqual([BLOCK_FILES[b], true]),
    );

    // Both ways the tier writes its log: rewritten whole (at open, compaction) and appended to.
    const dir = tempDir("log");
    ChainLog.rewrite(path.join(dir, "rewritten.log"), [
      chainRecord(0, blocks[0]),
      chainRecord(1, blocks[1]),
    ]).close();
    const appended = ChainLog.rewrite(path.join(dir, "appended.log"), []);
    appended.append([chainRecord(0, blocks[0])]);
    appended.append([chainRecord(1, blocks[1])]);
    appended.close();
    for (const name of ["rewritten.log", "appended.log"])
      expect([name, fs.readFileSync(path.join(dir, name)).equals(golden("chain.log"))]).toEqual([name, true]);
  });

  it("lays the envelope out as FORMAT.md says", () => {
    const stored = golden(BLOCK_FILES[0]);
    expect(stored.subarray(0, 8).toString("latin1")).toBe("KVPKBLK\0");
    expect([stored.readUInt32LE(8), stored.readUInt32LE(12)]).toEqual([1, 0]);
    expect(stored.subarray(16, 48).equals(ROOT)).toBe(true);
    expect(stored.subarray(48, 64).equals(Buffer.alloc(16))).toBe(true);
    // The payload: u64 header length, JSON padded with spaces to 8 bytes, then the tensors.
    const headerBytes = Number(stored.readBigUInt64LE(64));
    expect((8 + headerBytes) % 8).toBe(0);
    const json = JSON.parse(stored.toString("utf8", 72, 72 + headerBytes));
    expect(Object.keys(json)).toEqual([
      "__metadata__",
      "layers.0.keys",
      "layers.0.values",
      "layers.1.keys",
      "layers.1.values",
    ]);
    expect(json["layers.0.values"]).toEqual({ dtype: "F32", shape: [2, 4, 4], data_offsets: [128, 256] });
    expect(stored.length).toBe(64 + 8 + headerBytes + 4 * 128);
  });

  it("reads the golden blocks: envelope, payload and the whole wire record verify", () => {
    goldenBlocks().forEach((stored, b) => {
      const { root, payload } = openEnvelope(stored);
      expect(root.equals(ROOT)).toBe(true);
      const parsed = parseBlockPayload(payload, MODEL);
      const link = LINKS[b];
      expect(parsed.header).toEqual(
        makeHeader(
          MODEL,
          link.key,
          b === 0 ? Buffer.alloc(0) : LINKS[0].key,
          TOKENS.slice(link.start, link.end),
        ),
      );
      expect(parsed.file.metadata).toMatchObject({ format_version: "1", kv_layout_version: "1" });
      // Everything PutBlocks checks, the key recomputed from parent and tokens included.
      verifyRecord(wireRecord(stored), { model: MODEL, blockTokens: BLOCK_TOKENS, root: ROOT });
      const tensors = [0, 1].flatMap((i) =>
        (["keys", "values"] as const).map((kind) => tensor(b, i, kind, link.end - link.start)),
      );
      expect(payload.subarray(parsed.file.dataOffset).equals(Buffer.concat(tensors))).toBe(true);
    });
  });

  it("reads the golden chain log", () => {
    const blocks = goldenBlocks();
    expect(ChainLog.read(path.join(GOLDEN_V1, "chain.log"))).toEqual({
      records: blocks.map((stored, b) => chainRecord(b, stored)),
      firstAfterDamage: 2,
      damagedRanges: 0,
      skippedBytes: 0,
      tornBytes: 0,
      fileBytes: 276,
    });
  });

  it("refuses an envelope, payload or wire record of a future version with UNSUPPORTED_VERSION", () => {
    const stored = golden(BLOCK_FILES[0]);
    const v2 = patched(stored, 8, [2, 0, 0, 0]);
    expect(() => openEnvelope(v2)).toThrow(
      expect.objectContaining({
        name: "BlockError",
        code: "UNSUPPORTED_VERSION",
        message: "stored envelope version 2",
      }),
    );
    const payload = openEnvelope(stored).payload;
    const at = payload.indexOf('"format_version":"1"');
    expect(at).toBeGreaterThan(0);
    const future = patched(payload, at + '"format_version":"'.length, Buffer.from("3"));
    expect(() => parseBlockPayload(future, MODEL)).toThrow(
      expect.objectContaining({
        name: "BlockError",
        code: "UNSUPPORTED_VERSION",
        message: "format version 3; this server reads 1 and 2",
      }),
    );
    // Version 2 is for models with recurrent layers; a full-attention model's blocks are version 1.
    const v2Payload = patched(payload, at + '"format_version":"'.length, Buffer.from("2"));
    expect(() => parseBlockPayload(v2Payload, MODEL)).toThrow(
      expect.objectContaining({
        name: "BlockError",
        code: "UNSUPPORTED_VERSION",
        message: "format version 2; this model's blocks are version 1 (it has no recurrent layers)",
      }),
    );
    const record = { ...wireRecord(stored), formatVersion: 3 };
    expect(() => verifyRecord(record, { model: MODEL, blockTokens: BLOCK_TOKENS, root: ROOT })).toThrow(
      expect.objectContaining({ name: "BlockError", code: "UNSUPPORTED_VERSION" }),
    );
    expect(() => openEnvelope(patched(stored, 0, Buffer.from("NOTKVPK")))).toThrow(
      expect.objectContaining({
        name: "BlockError",
        code: "CORRUPT",
        message: "stored block has no envelope",
      }),
    );
  });

  it("writes and reads the pin journal byte for byte as the golden file records it", () => {
    const dir = tempDir("pins");
    // Appended to (each pin), and rewritten whole (each open).
    writePinJournal(path.join(dir, "appended.log"));
    fs.copyFileSync(path.join(GOLDEN_V1, "pins.log"), path.join(dir, "rewritten.log"));
    const { journal, records } = openPinJournal(path.join(dir, "rewritten.log"));
    journal.close();
    expect(records).toEqual(PINS);
    for (const name of ["appended.log", "rewritten.log"])
      expect([name, fs.readFileSync(path.join(dir, name)).equals(golden("pins.log"))]).toEqual([name, true]);
    const bytes = golden("pins.log");
    expect(bytes.subarray(0, 16).equals(Buffer.from("KVPKPIN\0\x01\0\0\0\0\0\0\0", "latin1"))).toBe(true);
    expect(bytes.length).toBe(16 + 2 * (4 + 48 + 8));
    expect([
      bytes.readUInt32LE(16),
      bytes.readUInt32LE(16 + 4 + 32),
      bytes.readBigUInt64LE(16 + 60 + 4 + 40),
    ]).toEqual([48, 1, BigInt(PIN_UNTIL_MS)]);
  });

  it("does not read a chain log of a future version, and leaves it untouched", () => {
    const file = path.join(tempDir("log-v2"), "chain.log");
    const v2 = patched(golden("chain.log"), 8, [2, 0, 0, 0]);
    fs.writeFileSync(file, v2);
    expect(ChainLog.read(file)).toBeNull();
    expect(fs.readFileSync(file).equals(v2)).toBe(true);
  });
});

describe("the SSD tier over the golden files", () => {
  it("writes blocks received with PutBlocks and their chain log byte for byte", async () => {
    const ssdDir = tempDir("put");
    const cache = await openCache(ssdDir);
    const report = await cache.putBlocks(TENANT, goldenBlocks().map(wireRecord));
    expect(report).toEqual({ accepted: 2, rejected: [] });
    await cache.close();
    expect(fs.readFileSync(path.join(ssdDir, "chain.log")).equals(golden("chain.log"))).toBe(true);
    const store = await openStore(path.join(ssdDir, "blocks"), STORE_OPTIONS);
    const got = await store.getMany(LINKS.map((l) => l.key));
    await store.close();
    expect(got.map((g, b) => Buffer.isBuffer(g) && g.equals(golden(BLOCK_FILES[b])))).toEqual([true, true]);
  });

  it("opens a tier from the golden chain log and serves the golden blocks", async () => {
    const cache = await openCache(await tierDir(goldenBlocks(), golden("chain.log")));
    expect(cache.stats()).toMatchObject({ ssdIndexSource: "log", indexedBlocks: 2 });
    expect(cache.lookup(TENANT, TOKENS)).toMatchObject({ tokens: 7, ssdTokens: 7, ramTokens: 0 });
    expect(await fetchAll(cache)).toEqual(goldenBlocks().map((stored) => stored.subarray(64)));
    await cache.close();
  });

  it("rebuilds the index from the golden blocks alone when the chain log is missing", async () => {
    const ssdDir = await tierDir(goldenBlocks(), null);
    const cache = await openCache(ssdDir);
    expect(cache.stats()).toMatchObject({ ssdIndexSource: "scan", indexedBlocks: 2 });
    expect(await fetchAll(cache)).toEqual(goldenBlocks().map((stored) => stored.subarray(64)));
    await cache.close();
    // The rebuilt log is the golden one.
    expect(fs.readFileSync(path.join(ssdDir, "chain.log")).equals(golden("chain.log"))).toBe(true);
  });

  it("rebuilds the index from the blocks when the chain log is of a future version", async () => {
    const ssdDir = await tierDir(goldenBlocks(), patched(golden("chain.log"), 8, [2, 0, 0, 0]));
    const cache = await openCache(ssdDir);
    expect(cache.stats()).toMatchObject({ ssdIndexSource: "scan", indexedBlocks: 2 });
    await cache.close();
    expect(fs.readFileSync(path.join(ssdDir, "chain.log")).equals(golden("chain.log"))).toBe(true);
  });

  it("opens a tier with the golden pin journal: the pins count again, the soft one until it expires", async () => {
    const ssdDir = await tierDir(goldenBlocks(), golden("chain.log"));
    fs.copyFileSync(path.join(GOLDEN_V1, "pins.log"), path.join(ssdDir, "pins.log"));
    const clock = { ms: BEFORE_EXPIRY_MS };
    const cache = await openCache(ssdDir, () => clock.ms);
    const usage = () => cache.pin(TENANT, { keys: [] }, { kind: "hard" });
    // 4 and 3 tokens of 2 layers x keys, values x 2 heads x 4 dims x 4 bytes.
    expect(usage()).toMatchObject({ hardPinnedBytes: 512, softPinnedBytes: 384 });
    expect(cache.stats()).toMatchObject({ ssd: { pinnedBlocks: 2 } });
    clock.ms = PIN_UNTIL_MS;
    expect(usage()).toMatchObject({ hardPinnedBytes: 512, softPinnedBytes: 0 });
    await cache.close();
  });

  it("does not read a pin journal of a future version: says so in the log and writes a version-1 one", async () => {
    const ssdDir = await tierDir(goldenBlocks(), golden("chain.log"));
    fs.writeFileSync(path.join(ssdDir, "pins.log"), patched(golden("pins.log"), 8, [2, 0, 0, 0]));
    logLines.length = 0;
    const cache = await openCache(ssdDir, () => BEFORE_EXPIRY_MS);
    expect(cache.pin(TENANT, { keys: [] }, { kind: "hard" })).toMatchObject({
      hardPinnedBytes: 0,
      softPinnedBytes: 0,
    });
    expect(logLines).toEqual(["kvpark: cache: pins.log has no pin journal header, pins are lost"]);
    await cache.close();
    expect(
      fs
        .readFileSync(path.join(ssdDir, "pins.log"))
        .subarray(0, 16)
        .equals(golden("pins.log").subarray(0, 16)),
    ).toBe(true);
  });

  it("drops a stored block of a future envelope version as corrupt, naming UNSUPPORTED_VERSION", async () => {
    const [first, second] = goldenBlocks();
    const cache = await openCache(
      await tierDir([first, patched(second, 8, [2, 0, 0, 0])], golden("chain.log")),
    );
    expect(cache.stats()).toMatchObject({ ssdIndexSource: "log", indexedBlocks: 2 });
    expect(await fetchAll(cache)).toEqual([
      first.subarray(64),
      "CORRUPT: UNSUPPORTED_VERSION: stored envelope version 2",
    ]);
    expect(cache.stats()).toMatchObject({ corruptBlocks: 1, indexedBlocks: 1 });
    await cache.close();
  });
});
