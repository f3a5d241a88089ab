/**
 * Block format version 2 (src/cache/FORMAT.md), pinned by golden files: the blocks of a model with a
 * recurrent layer, which carry that layer's state after their last token. Every later build must
 * keep reading them, and this build must write them byte for byte; version 1 stays pinned by
 * golden.spec.ts. Regenerate with UPDATE_GOLDEN=1 only when a version changes, into a new directory.
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { KV_LAYOUT_VERSION, chainKeys, rootKey } from "../../src/cache";
import {
  blockDataBytes,
  encodePayloadHeader,
  layerParts,
  makeHeader,
  openEnvelope,
  storedEnvelope,
  toRecord,
  type LayerPart,
  type ModelShape,
} from "../../src/cache/block-codec";
import { parseBlockPayload, verifyRecord } from "../../src/cache/block-verify";
import { verifyStore } from "../../src/cache/offline";
import { ModelCache } from "../../src/model/model-cache";
import { openCache, removeTempDirs, tempDir } from "./helpers";
import type { LoadedModel } from "../../src/model/loader";

const GOLDEN_V2 = path.join(__dirname, "golden", "v2");
const UPDATE = process.env.UPDATE_GOLDEN === "1";

// A made-up hybrid model: a recurrent layer, then an attention layer.
const MODEL: ModelShape = {
  fingerprint: crypto.createHash("sha256").update("kvpark golden hybrid model").digest("hex"),
  numLayers: 2,
  kvHeads: 2,
  headDim: 4,
  layerTypes: ["linear_attention", "full_attention"],
  recurrentShape: { conv: [1, 6], delta: [2, 2, 3] },
};
const TENANT = "golden";
const BLOCK_TOKENS = 4;
const TOKENS = [1, 300, 70000, 4, 5, 6, 7];
const ROOT = rootKey(TENANT, MODEL.fingerprint, 2);
const LINKS = chainKeys(ROOT, TOKENS, BLOCK_TOKENS, MODEL.fingerprint, TOKENS.length, 2);

afterAll(removeTempDirs);

function tensorShape(kind: LayerPart, tokens: number): number[] {
  if (kind === "conv") return MODEL.recurrentShape!.conv;
  if (kind === "delta") return MODEL.recurrentShape!.delta;
  return [MODEL.kvHeads, tokens, MODEL.headDim];
}

/** Tensor values, exact in float32 and different in every block, layer, tensor and element. */
function tensor(block: number, layer: number, kind: LayerPart, tokens: number): Float32Array {
  const n = tensorShape(kind, tokens).reduce((a, b) => a * b, 1);
  const base = block * 1000 + layer * 100 + ["keys", "values", "conv", "delta"].indexOf(kind) * 25;
  return Float32Array.from({ length: n }, (_, e) => ((e % 3 === 2 ? -1 : 1) * (base + e)) / 8);
}

/** Block `b` in its stored form, as the SSD tier composes it: envelope, payload header, tensors. */
function writeStoredBlock(b: number): Buffer {
  const link = LINKS[b];
  const tokenIds = TOKENS.slice(link.start, link.end);
  const parent = link.parent.equals(ROOT) ? Buffer.alloc(0) : link.parent;
  const pieces = [storedEnvelope(ROOT), encodePayloadHeader(makeHeader(MODEL, link.key, parent, tokenIds))];
  for (let i = 0; i < MODEL.numLayers; i++) {
    for (const kind of layerParts(MODEL, i))
      pieces.push(Buffer.from(tensor(b, i, kind, tokenIds.length).buffer));
  }
  return Buffer.concat(pieces);
}

const FILES = ["block-0.kvblk", "block-1.kvblk"];
const golden = (name: string) => fs.readFileSync(path.join(GOLDEN_V2, name));
const wireRecord = (stored: Buffer) => {
  const payload = openEnvelope(stored).payload;
  return toRecord(parseBlockPayload(payload, MODEL).header, payload);
};

describe("block format version 2", () => {
  if (UPDATE) {
    it("writes the golden files", () => {
      fs.mkdirSync(GOLDEN_V2, { recursive: true });
      FILES.forEach((name, b) => fs.writeFileSync(path.join(GOLDEN_V2, name), writeStoredBlock(b)));
    });
    return;
  }

  it("this build writes the golden blocks byte for byte", () => {
    FILES.forEach((name, b) => expect(writeStoredBlock(b).equals(golden(name))).toBe(true));
  });

  it("describes its layers and snapshot shapes in the metadata and on the wire", () => {
    const block = parseBlockPayload(openEnvelope(golden(FILES[0])).payload, MODEL);
    expect(block.file.metadata).toMatchObject({
      format_version: "2",
      kv_layout_version: "2",
      layer_kinds: '["linear_attention","full_attention"]',
      snapshot_conv_shape: "[1,6]",
      snapshot_delta_shape: "[2,2,3]",
      shape: "[2,4,4]",
    });
    expect([...block.file.tensors.keys()].sort()).toEqual([
      "layers.0.conv",
      "layers.0.delta",
      "layers.1.keys",
      "layers.1.values",
    ]);
    const record = wireRecord(golden(FILES[0]));
    expect(record).toMatchObject({
      formatVersion: 2,
      layerKinds: ["linear_attention", "full_attention"],
      snapshotConvShape: [1, 6],
      snapshotDeltaShape: [2, 2, 3],
    });
    // A block's bytes: 4 tokens of keys and values in one layer, one snapshot in the other.
    expect(blockDataBytes(MODEL, 4)).toBe(2 * 2 * 4 * 4 * 4 + (6 + 12) * 4);
  });

  it("verifies as a wire record, with keys of layout version 2", () => {
    FILES.forEach((name) =>
      expect(() =>
        verifyRecord(wireRecord(golden(name)), { model: MODEL, blockTokens: BLOCK_TOKENS, root: ROOT }),
      ).not.toThrow(),
    );
    // The keys of a model with recurrent layers differ from those its tokens would have under
    // layout version 1: the keys of full-attention models are unchanged by version 2.
    const v1 = chainKeys(rootKey(TENANT, MODEL.fingerprint), TOKENS, BLOCK_TOKENS, MODEL.fingerprint);
    expect(KV_LAYOUT_VERSION).toBe(1);
    expect(v1[0].key.equals(LINKS[0].key)).toBe(false);
  });

  it("is refused for a model that differs in layer kinds or snapshot shapes", () => {
    const record = wireRecord(golden(FILES[0]));
    const ctx = (model: ModelShape) => ({ model, blockTokens: BLOCK_TOKENS, root: ROOT });
    const attentionOnly: ModelShape = { ...MODEL, layerTypes: undefined, recurrentShape: null };
    expect(() => verifyRecord(record, ctx(attentionOnly))).toThrow(
      expect.objectContaining({
        code: "UNSUPPORTED_VERSION",
        message: "format version 2; this model's blocks are version 1 (it has no recurrent layers)",
      }),
    );
    const swapped: ModelShape = { ...MODEL, layerTypes: ["full_attention", "linear_attention"] };
    expect(() => verifyRecord(record, ctx(swapped))).toThrow(
      expect.objectContaining({
        code: "SHAPE_MISMATCH",
        message:
          "layer kinds [linear_attention,full_attention]; the model's are [full_attention,linear_attention]",
      }),
    );
    const wider: ModelShape = { ...MODEL, recurrentShape: { conv: [1, 8], delta: [2, 2, 3] } };
    expect(() => verifyRecord(record, ctx(wider))).toThrow(
      expect.objectContaining({ code: "SHAPE_MISMATCH" }),
    );
    const nan = Buffer.from(record.payload);
    const delta = parseBlockPayload(nan, MODEL).file.tensors.get("layers.0.delta")!;
    const at = parseBlockPayload(nan, MODEL).file.dataOffset + delta.begin;
    nan.writeFloatLE(NaN, at);
    expect(() => verifyRecord(toRecord({ ...record }, nan), ctx(MODEL))).toThrow(
      expect.objectContaining({
        code: "INVALID_PAYLOAD",
        message: "tensor layers.0.delta holds NaN or infinity",
      }),
    );
  });

  it("is stored on SSD, restored with the last block's snapshot, and verified offline", async () => {
    const ssdDir = tempDir("ssd");
    const model = MODEL as unknown as LoadedModel;
    const records = FILES.map((name) => wireRecord(golden(name)));
    const cache = await openCache(model, { ssdDir, blockTokens: BLOCK_TOKENS });
    expect(await cache.putBlocks(TENANT, records)).toEqual({ accepted: 2, rejected: [] });
    await cache.flush();
    const match = cache.lookup(TENANT, TOKENS);
    expect(match).toMatchObject({ tokens: 7, ssdTokens: 7 });
    const sequence = new ModelCache(2, 2, 4, 8, [0]);
    const report = await cache.restore(match, sequence);
    expect(report).toMatchObject({ restoredTokens: 7, ssdTokens: 7, corruptBlocks: 0 });
    // The recurrent layer continues from the trailing block's snapshot; the attention layer holds
    // both blocks' keys.
    const state = sequence.recurrent[0]!;
    expect(state.position).toBe(7);
    expect(Array.from(mx.flatten(state.delta!).tolist() as number[])).toEqual(
      Array.from(tensor(1, 0, "delta", 3)),
    );
    expect(state.conv!.shape).toEqual([1, 1, 6]);
    const keys = sequence.export(4, 7)[1] as { keys: mx.array };
    expect(Array.from(mx.flatten(keys.keys).tolist() as number[])).toEqual(
      Array.from(tensor(1, 1, "keys", 3)),
    );
    await cache.close();
    const verified = await verifyStore(ssdDir);
    expect(verified).toMatchObject({ blocks: 2, intact: 2, damaged: [] });
  });
});
