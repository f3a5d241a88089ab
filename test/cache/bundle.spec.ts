/**
 * The bundle format of Export and Import (src/cache/FORMAT.md, "Bundle"), pinned by a golden file
 * version 1 wrote: the two golden blocks of golden/v1 (tenant "golden", 4 and 3 tokens) as a bundle.
 * Every later build must keep reading it, and this build must write it byte for byte. A truncated or
 * altered bundle is refused at every length and every byte, naming the entry.
 *
 * Regenerate with UPDATE_GOLDEN=1 only when the version changes, into a new directory.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { BundleHeaderSchema, BundleManifestSchema, KVBlockSchema } from "../../gen/kvpark/v1/kvblocks_pb";
import { normalizeRecord, openEnvelope, toRecord } from "../../src/cache/block-codec";
import { parseBlockPayload, verifyRecord } from "../../src/cache/block-verify";
import type { KVBlockRecord, ModelShape } from "../../src/cache/block-codec";
import { chainKeys, rootKey } from "../../src/cache/block-key";
import {
  BUNDLE_FORMAT_VERSION,
  BundleReader,
  BundleWriter,
  bundleModel,
  checkBundleHeader,
  type BundleEntry,
} from "../../src/cache/bundle";

const GOLDEN_V1 = path.join(__dirname, "golden", "v1");
const BUNDLE_FILE = path.join(GOLDEN_V1, "bundle.kvbundle");
const UPDATE = process.env.UPDATE_GOLDEN === "1";

// The golden model, tenant and tokens of golden.spec.ts.
const MODEL: ModelShape = {
  fingerprint: crypto.createHash("sha256").update("kvpark golden model").digest("hex"),
  numLayers: 2,
  kvHeads: 2,
  headDim: 4,
};
const BLOCK_TOKENS = 4;
const ROOT = rootKey("golden", MODEL.fingerprint);
const LINKS = chainKeys(ROOT, [1, 300, 70000, 4, 5, 6, 7], BLOCK_TOKENS, MODEL.fingerprint);
const CREATED_UNIX_MS = 1_700_000_000_000;

/** The golden blocks as GetBlocks sends them. */
const records: KVBlockRecord[] = ["block-0.kvblk", "block-1.kvblk"].map((name) => {
  const { payload } = openEnvelope(fs.readFileSync(path.join(GOLDEN_V1, name)));
  return toRecord(parseBlockPayload(payload, MODEL).header, Buffer.from(payload));
});

function writeBundle(blocks: KVBlockRecord[] = records): Buffer {
  const writer = new BundleWriter({
    model: MODEL,
    blockTokens: BLOCK_TOKENS,
    createdUnixMs: CREATED_UNIX_MS,
  });
  return Buffer.concat([writer.start(), ...blocks.map((r) => writer.block(r)), writer.finish()]);
}

/** Every entry of `bytes` read in pieces of `piece` bytes, then end(). */
function readAll(bytes: Buffer, piece = bytes.length): BundleEntry[] {
  const reader = new BundleReader();
  const out: BundleEntry[] = [];
  for (let at = 0; at < bytes.length; at += piece) out.push(...reader.push(bytes.subarray(at, at + piece)));
  reader.end();
  return out;
}

/** The error reading `bytes` throws, as [code, message]. */
function refusal(bytes: Buffer): [string, string] {
  try {
    readAll(bytes);
  } catch (err) {
    const e = err as { code: string; message: string };
    return [e.code, e.message];
  }
  throw new Error("the bundle was read");
}

/** The frames of a bundle as FORMAT.md lays them out: [start, end) of each, after the 16-byte file header. */
function frames(bytes: Buffer): { start: number; end: number; kind: number; index: number; body: Buffer }[] {
  const out = [];
  for (let at = 16; at < bytes.length;) {
    const bodyBytes = bytes.readUInt32LE(at + 8);
    const end = at + 12 + bodyBytes + 32;
    out.push({
      start: at,
      end,
      kind: bytes.readUInt32LE(at),
      index: bytes.readUInt32LE(at + 4),
      body: bytes.subarray(at + 12, at + 12 + bodyBytes),
    });
    at = end;
  }
  return out;
}

beforeAll(() => {
  if (UPDATE) fs.writeFileSync(BUNDLE_FILE, writeBundle());
});

describe("the bundle format, version 1", () => {
  const golden = () => fs.readFileSync(BUNDLE_FILE);

  it("is written byte for byte as the golden file records it", () => {
    expect(BUNDLE_FORMAT_VERSION).toBe(1);
    expect(writeBundle().equals(golden())).toBe(true);
  });

  it("lays the file out as FORMAT.md says: file header, frames with kind, index, length and SHA-256", () => {
    const bytes = golden();
    expect(bytes.subarray(0, 16).equals(Buffer.from("KVPKBND\0\x01\0\0\0\0\0\0\0", "latin1"))).toBe(true);
    const f = frames(bytes);
    expect(f.map((x) => [x.kind, x.index])).toEqual([
      [1, 0],
      [2, 1],
      [2, 2],
      [3, 3],
    ]);
    expect(f[f.length - 1].end).toBe(bytes.length);
    for (const x of f) {
      const sha = crypto
        .createHash("sha256")
        .update(bytes.subarray(x.start, x.end - 32))
        .digest();
      expect(sha.equals(bytes.subarray(x.end - 32, x.end))).toBe(true);
    }
    const header = fromBinary(BundleHeaderSchema, f[0].body);
    expect(header).toMatchObject({
      formatVersion: 1,
      modelFingerprint: MODEL.fingerprint,
      blockTokens: 4,
      layerCount: 2,
      kvHeads: 2,
      headDim: 4,
      createdUnixMs: BigInt(CREATED_UNIX_MS),
    });
    // The blocks are KVBlock messages, exactly as GetBlocks sends them.
    const blocks = [f[1], f[2]].map((x) => fromBinary(KVBlockSchema, x.body));
    blocks.forEach((b, i) => {
      expect(normalizeRecord(b)).toEqual(records[i]);
      expect(Buffer.from(b.key).equals(LINKS[i].key)).toBe(true);
    });
    const manifest = fromBinary(BundleManifestSchema, f[3].body);
    const entriesSha = crypto
      .createHash("sha256")
      .update(Buffer.concat(f.slice(0, 3).map((x) => bytes.subarray(x.end - 32, x.end))))
      .digest();
    expect(manifest).toMatchObject({
      formatVersion: 1,
      modelFingerprint: MODEL.fingerprint,
      blockTokens: 4,
      entryCount: 3,
      skippedBlocks: 0,
    });
    expect(Buffer.from(manifest.entriesSha256).equals(entriesSha)).toBe(true);
    expect(
      manifest.blocks.map((b) => [
        Buffer.from(b.key).toString("hex"),
        Buffer.from(b.parentKey).toString("hex"),
        b.tokenCount,
        Buffer.from(b.payloadSha256).equals(records[manifest.blocks.indexOf(b)].payloadSha256),
      ]),
    ).toEqual([
      [LINKS[0].key.toString("hex"), "", 4, true],
      [LINKS[1].key.toString("hex"), LINKS[0].key.toString("hex"), 3, true],
    ]);
  });

  it("reads the golden bundle whole and in pieces of any size; its blocks verify as PutBlocks verifies them", () => {
    for (const piece of [golden().length, 1000, 13, 1]) {
      const entries = readAll(golden(), piece);
      expect(entries.map((e) => [e.kind, e.index])).toEqual([
        ["header", 0],
        ["block", 1],
        ["block", 2],
        ["manifest", 3],
      ]);
    }
    const entries = readAll(golden());
    const header = entries[0].kind === "header" ? entries[0].header : undefined;
    expect(bundleModel(header!)).toEqual(MODEL);
    expect(() => checkBundleHeader(header!, MODEL, BLOCK_TOKENS)).not.toThrow();
    for (const e of entries)
      if (e.kind === "block")
        verifyRecord(normalizeRecord(e.block), { model: MODEL, blockTokens: BLOCK_TOKENS, root: ROOT });
  });

  it("refuses a bundle cut at any length with DATA_LOSS, naming where it ends", () => {
    const bytes = golden();
    const f = frames(bytes);
    for (let cut = 0; cut < bytes.length; cut++) {
      const [code, message] = refusal(bytes.subarray(0, cut));
      const inside = f.find((x) => cut > x.start && cut < x.end);
      const after = f.filter((x) => x.end <= cut).at(-1);
      const want =
        cut < 16
          ? `bundle is truncated: ${cut} bytes, fewer than its 16-byte file header`
          : inside
            ? `bundle is truncated in bundle entry ${inside.index}: the bundle ends ${cut - inside.start} bytes into it`
            : after
              ? `bundle is truncated after bundle entry ${after.index}: what follows it, at least the manifest that ends a bundle, is missing`
              : "bundle is truncated after its file header: it holds no entry";
      expect([cut, code, message]).toEqual([cut, "KV_CORRUPT", want]);
    }
  });

  it("refuses every altered byte, naming the entry it is in (a block by its key too)", () => {
    const bytes = golden();
    const f = frames(bytes);
    const key0 = `${LINKS[0].key.toString("hex").slice(0, 16)}…`;
    for (let at = 0; at < bytes.length; at++) {
      const altered = Buffer.from(bytes);
      altered[at] ^= 0x10;
      const [code, message] = refusal(altered);
      if (at < 16) {
        expect([at, code]).toEqual([at, "INVALID_ARGUMENT"]);
        continue;
      }
      const x = f.find((y) => at >= y.start && at < y.end)!;
      expect([at, code, message]).toEqual([
        at,
        "KV_CORRUPT",
        expect.stringContaining(`bundle entry ${x.index}`),
      ]);
    }
    // A byte of the first block's tensors: the frame still decodes, so the message names the block.
    const altered = Buffer.from(bytes);
    altered[f[1].end - 100] ^= 1;
    expect(refusal(altered)).toEqual([
      "KV_CORRUPT",
      `bundle entry 1 (block ${key0}) is damaged: its checksum does not match`,
    ]);
  });

  it("refuses a missing or repeated entry, bytes after the manifest, and another version", () => {
    const bytes = golden();
    const f = frames(bytes);
    const without = (i: number) => Buffer.concat([bytes.subarray(0, f[i].start), bytes.subarray(f[i].end)]);
    expect(refusal(without(1))).toEqual([
      "KV_CORRUPT",
      "bundle entry 1 is numbered 2: an entry is missing or out of order",
    ]);
    expect(refusal(without(3))).toEqual([
      "KV_CORRUPT",
      "bundle is truncated after bundle entry 2: what follows it, at least the manifest that ends a bundle, is missing",
    ]);
    expect(refusal(Buffer.concat([bytes, Buffer.from([0])]))).toEqual([
      "INVALID_ARGUMENT",
      "bundle has bytes after its manifest (entry 3)",
    ]);
    const v2 = Buffer.from(bytes);
    v2.writeUInt32LE(2, 8);
    expect(refusal(v2)).toEqual(["INVALID_ARGUMENT", "bundle format version 2; this server reads 1"]);
    expect(refusal(writeBundle([records[0], records[0], records[1]]))).toEqual([
      "INVALID_ARGUMENT",
      `bundle entry 2 (block ${LINKS[0].key.toString("hex").slice(0, 16)}…): the block is in the bundle twice`,
    ]);
    // Consistently written, but a child before its parent: the writer's caller broke the order.
    const reversed = writeBundle([records[1], records[0]]);
    expect(refusal(reversed)).toEqual([
      "INVALID_ARGUMENT",
      `bundle entry 1 (block ${LINKS[1].key.toString("hex").slice(0, 16)}…): its parent block is not earlier in the bundle`,
    ]);
  });

  it("refuses a header of another model or block size", () => {
    const entries = readAll(fs.readFileSync(BUNDLE_FILE));
    const header = entries[0].kind === "header" ? entries[0].header : undefined;
    expect(() => checkBundleHeader(header!, { ...MODEL, fingerprint: "f".repeat(64) }, BLOCK_TOKENS)).toThrow(
      expect.objectContaining({
        code: "MODEL_MISMATCH",
        message: `bundle entry 0: the bundle holds blocks of model ${MODEL.fingerprint.slice(0, 40)}; served model is ${"f".repeat(64)}`,
      }),
    );
    expect(() => checkBundleHeader(header!, MODEL, 64)).toThrow(
      expect.objectContaining({
        code: "FAILED_PRECONDITION",
        message: "bundle entry 0: the bundle's blocks hold 4 tokens; this server's hold 64 (--block-tokens)",
      }),
    );
  });
});
