import * as crypto from "node:crypto";
import type { KVBlockRecord, PrefixCache } from "../../src/cache";
import { encodePayloadHeader, type BlockHeader } from "../../src/cache/block-codec";
import { FIRST_BLOCK_KEY_MISMATCH, parseBlockPayload } from "../../src/cache/block-verify";
import type { LoadedModel } from "../../src/model/loader";
import { generate, openCache, randomTokens, removeTempDirs, tempDir, tinyModel } from "./helpers";

let model: LoadedModel;
let source: PrefixCache;
let records: KVBlockRecord[];
const prompt: number[] = [];

beforeAll(async () => {
  model = await tinyModel();
  source = await openCache(model);
  prompt.push(...randomTokens(21, 20, model.config.vocabSize));
  await generate(source, model, "t", prompt, 1); // 20 tokens: blocks of 8, 8 and 4
  records = [];
  for await (const r of source.getBlocks(
    "t",
    source.lookup("t", prompt).blocks.map((b) => b.key),
  )) {
    if (!("block" in r)) throw new Error(r.error.code);
    records.push(r.block);
  }
});

afterAll(async () => {
  await source.close();
  removeTempDirs();
});

/** The record with header fields changed and the payload rebuilt to agree (metadata, checksum). */
function reencode(record: KVBlockRecord, change: Partial<BlockHeader>, poison?: number): KVBlockRecord {
  const parsed = parseBlockPayload(record.payload, model);
  const header: BlockHeader = { ...record, ...change };
  const data = Buffer.from(record.payload.subarray(parsed.file.dataOffset));
  if (poison !== undefined) data.writeFloatLE(poison, 4 * 5);
  const payload = Buffer.concat([encodePayloadHeader(header), data]);
  return { ...header, payload, payloadSha256: crypto.createHash("sha256").update(payload).digest() };
}

describe("putBlocks verifies every block before storing it", () => {
  it("the blocks as fetched describe themselves exactly", () => {
    expect(records.map((r) => [r.formatVersion, r.dtype, r.layerCount, r.shape, r.tokenIds.length])).toEqual([
      [1, "F32", 2, [2, 8, 16], 8],
      [1, "F32", 2, [2, 8, 16], 8],
      [1, "F32", 2, [2, 4, 16], 4],
    ]);
    expect(records[0].parentKey.length).toBe(0);
    expect(records[1].parentKey.equals(records[0].key)).toBe(true);
    expect(records[0].modelFingerprint).toBe(model.fingerprint);
    expect(records[0].tokenIds).toEqual(prompt.slice(0, 8));
    expect(
      records[0].payloadSha256.equals(crypto.createHash("sha256").update(records[0].payload).digest()),
    ).toBe(true);
  });

  const cases: [string, () => KVBlockRecord[], string, string][] = [
    [
      "a wrong key",
      () => [reencode(records[0], { key: Buffer.alloc(32, 1) })],
      "KEY_MISMATCH",
      FIRST_BLOCK_KEY_MISMATCH,
    ],
    [
      "a wrong key after the first block",
      () => [reencode(records[1], { key: Buffer.alloc(32, 1) })],
      "KEY_MISMATCH",
      "key differs from the key computed from parent key and token ids",
    ],
    [
      "a wrong fingerprint",
      () => [reencode(records[0], { modelFingerprint: "0".repeat(64) })],
      "MODEL_MISMATCH",
      `block of model ${"0".repeat(64)}; served model is <served>`,
    ],
    [
      "a wrong shape",
      () => [reencode(records[0], { shape: [2, 8, 8] })],
      "SHAPE_MISMATCH",
      "shape [2,8,8]; expected [2,8,16]",
    ],
    [
      "a wrong layer count",
      () => [reencode(records[0], { layerCount: 3 })],
      "SHAPE_MISMATCH",
      "3 layers; the model has 2",
    ],
    [
      "another dtype",
      () => [reencode(records[0], { dtype: "F16" })],
      "SHAPE_MISMATCH",
      "dtype F16; this server stores F32",
    ],
    [
      "a NaN value",
      () => [reencode(records[0], {}, NaN)],
      "INVALID_PAYLOAD",
      "tensor layers.0.keys holds NaN or infinity",
    ],
    [
      "an infinite value",
      () => [reencode(records[0], {}, -Infinity)],
      "INVALID_PAYLOAD",
      "tensor layers.0.keys holds NaN or infinity",
    ],
    [
      "an unknown format version",
      () => [reencode(records[0], { formatVersion: 3 })],
      "UNSUPPORTED_VERSION",
      "format version 3; this server reads 1 and 2",
    ],
    [
      "a payload that does not match its checksum",
      () => [{ ...records[0], payloadSha256: Buffer.alloc(32) }],
      "INVALID_PAYLOAD",
      "payload_sha256 does not match the payload",
    ],
    [
      "a header the payload contradicts",
      // The payload and its checksum agree; the header's last token id does not.
      () => {
        const r = reencode(records[0], {});
        return [{ ...r, tokenIds: [...r.tokenIds.slice(0, 7), r.tokenIds[7] + 1] }];
      },
      "INVALID_PAYLOAD",
      "payload metadata token_ids differs from the block header",
    ],
    [
      "an unknown parent",
      () => [records[1]],
      "PARENT_MISSING",
      "the parent block is not cached here; send the chain from its first block",
    ],
  ];

  it.each(cases)("refuses %s with its reason and stores nothing", async (_name, blocks, code, message) => {
    const target = await openCache(model, { ssdDir: tempDir("ssd") });
    const sent = blocks();
    expect(await target.putBlocks("t", sent)).toEqual({
      accepted: 0,
      rejected: [
        { index: 0, key: sent[0].key, code, message: message.replace("<served>", model.fingerprint) },
      ],
    });
    await target.flush();
    const stats = target.stats();
    expect([stats.indexedBlocks, stats.ram.blocks, stats.ssd.blocks, stats.writeQueueDepth]).toEqual([
      0, 0, 0, 0,
    ]);
    expect(target.lookup("t", prompt).tokens).toBe(0);
    await target.close();
  });

  it("refuses another tenant's first block: its key does not follow from this tenant's root", async () => {
    const target = await openCache(model);
    expect(await target.putBlocks("u", [records[0]])).toEqual({
      accepted: 0,
      rejected: [{ index: 0, key: records[0].key, code: "KEY_MISMATCH", message: FIRST_BLOCK_KEY_MISMATCH }],
    });
    // The message says why without naming a tenant.
    expect(FIRST_BLOCK_KEY_MISMATCH).toBe(
      "key differs from the key computed from parent key and token ids: a chain's first block hangs " +
        "off the tenant's root and keys are salted per tenant, so this block was likely exported under " +
        "another tenant (or on a node with authentication set up differently); send it under the tenant " +
        "that exported it",
    );
    await target.close();
  });

  it("keeps the good blocks of a stream and names the bad ones by position", async () => {
    const target = await openCache(model, { ssdDir: tempDir("ssd") });
    const bad = reencode(records[1], {}, NaN);
    const report = await target.putBlocks("t", [records[0], bad, records[1], records[2]]);
    expect(report).toEqual({
      accepted: 3,
      rejected: [
        {
          index: 1,
          key: bad.key,
          code: "INVALID_PAYLOAD",
          message: "tensor layers.0.keys holds NaN or infinity",
        },
      ],
    });
    expect(target.lookup("t", prompt).tokens).toBe(20);
    // Sending the same blocks again is accepted without storing twice.
    expect(await target.putBlocks("t", records)).toEqual({ accepted: 3, rejected: [] });
    await target.flush();
    expect(target.stats().ssd.blocks).toBe(3);
    await target.close();
  });

  it("accepts blocks whose bytes are plain Uint8Arrays, as protobuf-es decodes them", async () => {
    const target = await openCache(model);
    const plain = records.map((r) => ({
      ...r,
      key: new Uint8Array(r.key),
      parentKey: new Uint8Array(r.parentKey),
      payload: new Uint8Array(r.payload),
      payloadSha256: new Uint8Array(r.payloadSha256),
      tokenIds: Uint32Array.from(r.tokenIds),
    }));
    expect(await target.putBlocks("t", plain)).toEqual({ accepted: 3, rejected: [] });
    expect(target.lookup("t", prompt)).toMatchObject({ tokens: 20, ramTokens: 20 });
    const got = [];
    for await (const r of target.getBlocks("t", [new Uint8Array(records[1].key)])) got.push("block" in r);
    expect(got).toEqual([true]);
    await target.close();
  });

  it("getBlocks serves only the caller's blocks, in request order", async () => {
    const keys = [records[2].key, Buffer.alloc(32, 9), records[0].key];
    const got = [];
    for await (const r of source.getBlocks("t", keys))
      got.push("block" in r ? r.block.key.toString("hex") : r.error.code);
    expect(got).toEqual([records[2].key.toString("hex"), "NOT_FOUND", records[0].key.toString("hex")]);
    const other = [];
    for await (const r of source.getBlocks("u", keys)) other.push("block" in r ? "block" : r.error);
    expect(other).toEqual([
      { code: "NOT_FOUND", message: "no such block for this tenant" },
      { code: "NOT_FOUND", message: "no such block for this tenant" },
      { code: "NOT_FOUND", message: "no such block for this tenant" },
    ]);
  });
});
