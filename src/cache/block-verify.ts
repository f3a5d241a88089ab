import * as crypto from "node:crypto";
import {
  BLOCK_DTYPE,
  BLOCK_FORMAT_VERSION,
  BLOCK_FORMAT_VERSION_V1,
  blockTensor,
  formatVersionOf,
  headerMetadata,
  layerParts,
  layoutVersionOf,
  tensorName,
  tensorShape,
  type BlockHeader,
  type KVBlockRecord,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import { BLOCK_KEY_BYTES, blockKey } from "./block-key";
import { BlockError } from "./errors";
import { SafetensorsError, parseSafetensors, type SafetensorsFile } from "../util/safetensors";

function fail(code: ConstructorParameters<typeof BlockError>[0], message: string): never {
  throw new BlockError(code, message);
}

function parseJsonArray(value: string | undefined, field: string): number[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value ?? "");
  } catch {
    fail("INVALID_PAYLOAD", `metadata ${field} is not JSON`);
  }
  if (!Array.isArray(parsed) || !parsed.every((x) => Number.isSafeInteger(x) && x >= 0 && x <= 0xffffffff)) {
    fail("INVALID_PAYLOAD", `metadata ${field} is not a list of uint32`);
  }
  return parsed as number[];
}

function parseUint(value: string | undefined, field: string): number {
  if (value === undefined || !/^\d{1,9}$/.test(value))
    fail("INVALID_PAYLOAD", `metadata ${field} is not a count`);
  return Number(value);
}

function parseKeyHex(value: string | undefined, field: string, allowEmpty: boolean): Buffer {
  if (value === undefined) fail("INVALID_PAYLOAD", `metadata ${field} is missing`);
  if (value === "" && allowEmpty) return Buffer.alloc(0);
  if (!/^[0-9a-f]{64}$/.test(value)) fail("INVALID_PAYLOAD", `metadata ${field} is not a 32-byte hex key`);
  return Buffer.from(value, "hex");
}

/**
 * Parses a payload and checks it is a block of `model`: well-formed safetensors, a complete
 * header in its metadata, a known format version, the model's fingerprint, layer count, dtype
 * and shape, and exactly the tensors that header promises. Throws BlockError.
 */
export function parseBlockPayload(payload: Buffer, model: ModelShape): ParsedBlock {
  let file: SafetensorsFile;
  try {
    file = parseSafetensors(payload);
  } catch (err) {
    if (err instanceof SafetensorsError) fail("INVALID_PAYLOAD", `payload: ${err.message}`);
    throw err;
  }
  const m = file.metadata;
  const formatVersion = parseUint(m.format_version, "format_version");
  checkFormatVersion(formatVersion, model);
  const layoutVersion = parseUint(m.kv_layout_version, "kv_layout_version");
  if (layoutVersion !== layoutVersionOf(model)) {
    fail(
      "UNSUPPORTED_VERSION",
      `KV layout version ${layoutVersion}; this server uses ${layoutVersionOf(model)} for this model`,
    );
  }
  if (m.model_fingerprint !== model.fingerprint) {
    fail(
      "MODEL_MISMATCH",
      `block of model ${String(m.model_fingerprint)}; served model is ${model.fingerprint}`,
    );
  }
  const v2 = formatVersion !== BLOCK_FORMAT_VERSION_V1;
  const header: BlockHeader = {
    formatVersion,
    modelFingerprint: m.model_fingerprint,
    key: parseKeyHex(m.key, "key", false),
    parentKey: parseKeyHex(m.parent_key, "parent_key", true),
    tokenIds: parseJsonArray(m.token_ids, "token_ids"),
    layerCount: parseUint(m.layer_count, "layer_count"),
    dtype: m.dtype ?? "",
    shape: parseJsonArray(m.shape, "shape"),
    layerKinds: v2 ? parseKinds(m.layer_kinds) : [],
    snapshotConvShape: v2 ? parseJsonArray(m.snapshot_conv_shape, "snapshot_conv_shape") : [],
    snapshotDeltaShape: v2 ? parseJsonArray(m.snapshot_delta_shape, "snapshot_delta_shape") : [],
  };
  checkShape(header, model);
  const expected = new Set<string>();
  for (let i = 0; i < model.numLayers; i++) {
    for (const kind of layerParts(model, i)) {
      const name = tensorName(i, kind);
      expected.add(name);
      const info = file.tensors.get(name);
      if (!info) fail("SHAPE_MISMATCH", `payload has no tensor ${name}`);
      const want = tensorShape(header, kind);
      if (info.dtype !== BLOCK_DTYPE || !sameNumbers(info.shape, want)) {
        fail(
          "SHAPE_MISMATCH",
          `tensor ${name} is ${info.dtype} [${info.shape}], expected ${BLOCK_DTYPE} [${want}]`,
        );
      }
    }
  }
  for (const name of file.tensors.keys()) {
    if (!expected.has(name)) fail("SHAPE_MISMATCH", `payload has an unexpected tensor ${name}`);
  }
  return { header, file, payload };
}

/**
 * A version this build reads, and the one the model's blocks are written in: version 1 for a
 * model without recurrent layers (whose blocks cannot carry their state), version 2 with them.
 * A model without recurrent layers writes version 1 only, so version 2 is refused for it too:
 * its keys would name the same tokens as its version 1 blocks.
 */
function checkFormatVersion(version: number, model: ModelShape): void {
  if (version !== BLOCK_FORMAT_VERSION_V1 && version !== BLOCK_FORMAT_VERSION) {
    fail(
      "UNSUPPORTED_VERSION",
      `format version ${version}; this server reads ${BLOCK_FORMAT_VERSION_V1} and ${BLOCK_FORMAT_VERSION}`,
    );
  }
  const want = formatVersionOf(model);
  if (version !== want) {
    fail(
      "UNSUPPORTED_VERSION",
      `format version ${version}; this model's blocks are version ${want} ` +
        (want === BLOCK_FORMAT_VERSION
          ? "(its recurrent layers need snapshots)"
          : "(it has no recurrent layers)"),
    );
  }
}

const LAYER_KINDS: readonly string[] = ["full_attention", "sliding_attention", "linear_attention"];

function parseKinds(value: string | undefined): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value ?? "");
  } catch {
    fail("INVALID_PAYLOAD", "metadata layer_kinds is not JSON");
  }
  if (!Array.isArray(parsed) || !parsed.every((k) => typeof k === "string" && LAYER_KINDS.includes(k))) {
    fail("INVALID_PAYLOAD", `metadata layer_kinds is not a list of ${LAYER_KINDS.join(", ")}`);
  }
  return parsed as string[];
}

function checkShape(h: BlockHeader, model: ModelShape): void {
  if (h.tokenIds.length === 0) fail("SHAPE_MISMATCH", "block holds no tokens");
  if (h.layerCount !== model.numLayers) {
    fail("SHAPE_MISMATCH", `${h.layerCount} layers; the model has ${model.numLayers}`);
  }
  if (h.dtype !== BLOCK_DTYPE) fail("SHAPE_MISMATCH", `dtype ${h.dtype}; this server stores ${BLOCK_DTYPE}`);
  const want = [model.kvHeads, h.tokenIds.length, model.headDim];
  if (!sameNumbers(h.shape, want)) fail("SHAPE_MISMATCH", `shape [${h.shape}]; expected [${want}]`);
  if (h.formatVersion === BLOCK_FORMAT_VERSION_V1) {
    if (h.layerKinds.length + h.snapshotConvShape.length + h.snapshotDeltaShape.length > 0) {
      fail("SHAPE_MISMATCH", "a version 1 block has no layer kinds or snapshot shapes");
    }
    return;
  }
  const kinds = model.layerTypes ?? [];
  if (!sameStrings(h.layerKinds, kinds)) {
    fail("SHAPE_MISMATCH", `layer kinds [${h.layerKinds}]; the model's are [${kinds}]`);
  }
  const shape = model.recurrentShape ?? { conv: [], delta: [] };
  if (!sameNumbers(h.snapshotConvShape, shape.conv) || !sameNumbers(h.snapshotDeltaShape, shape.delta)) {
    fail(
      "SHAPE_MISMATCH",
      `snapshot shapes [${h.snapshotConvShape}] and [${h.snapshotDeltaShape}]; the model's are [${shape.conv}] and [${shape.delta}]`,
    );
  }
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Whether every float32 of `bytes` (little-endian) is finite: a value is NaN or an infinity exactly
 * when its exponent bits are all ones, bits 7-14 of its high half. Reading bytes works at any
 * alignment: a value in a payload read from Redis or the wire sits wherever the message put it, and
 * viewing it as a Float32Array would first need a copy of every tensor (measured: 14 ms for 50 MB
 * here, against 45 ms for the copy and the float loop, and the copies' garbage).
 */
export function allFinite(bytes: Uint8Array): boolean {
  for (let i = 3; i < bytes.length; i += 4) {
    if ((bytes[i] & 0x7f) === 0x7f && (bytes[i - 1] & 0x80) !== 0) return false;
  }
  return true;
}

/** Limits and context for checking a block that arrives from outside. */
export interface VerifyContext {
  model: ModelShape;
  /** Longest block accepted: the cache's blockTokens. */
  blockTokens: number;
  /**
   * The caller's root key: the parent of a block whose parent_key is empty. Null when the tenant is
   * not known (a bundle checked offline): a first block's key is then not checked.
   */
  root: Buffer | null;
  /**
   * The payload's SHA-256 when the caller computed it already (off the engine's thread, see
   * payloadDigest); verifyRecord computes it otherwise. Either way it is compared with the record's.
   */
  payloadDigest?: Buffer;
}

/**
 * The SHA-256 of a payload, computed on libuv's thread pool (WebCrypto's digest) rather than on the
 * calling thread, so that a restore checks the other blocks of a batch while their hashes run.
 */
export async function payloadDigest(payload: Uint8Array): Promise<Buffer> {
  return Buffer.from(await crypto.subtle.digest("SHA-256", payload));
}

/**
 * Why a chain's first block does not verify when its key is right for another tenant: keys are
 * salted per tenant (through the root), so a block fetched or exported under one tenant, or on a
 * node without authentication (the default tenant), verifies under that tenant only.
 */
export const FIRST_BLOCK_KEY_MISMATCH =
  "key differs from the key computed from parent key and token ids: a chain's first block hangs " +
  "off the tenant's root and keys are salted per tenant, so this block was likely exported under " +
  "another tenant (or on a node with authentication set up differently); send it under the tenant " +
  "that exported it";

/**
 * Checks a block received from a client or another node before anything is stored: format
 * version, fingerprint, key lengths, shape against the model, the payload checksum, payload
 * structure and metadata, finite values, and finally the key recomputed from parent key and
 * token ids. Returns the parsed payload; throws BlockError naming the first failed check.
 */
export function verifyRecord(record: KVBlockRecord, ctx: VerifyContext): ParsedBlock {
  const { model } = ctx;
  checkFormatVersion(record.formatVersion, model);
  if (record.modelFingerprint !== model.fingerprint) {
    fail("MODEL_MISMATCH", `block of model ${record.modelFingerprint}; served model is ${model.fingerprint}`);
  }
  if (record.key.length !== BLOCK_KEY_BYTES)
    fail("KEY_MISMATCH", `key has ${record.key.length} bytes, not 32`);
  if (record.parentKey.length !== 0 && record.parentKey.length !== BLOCK_KEY_BYTES) {
    fail("KEY_MISMATCH", `parent key has ${record.parentKey.length} bytes, not 0 or 32`);
  }
  if (!record.tokenIds.every((t) => Number.isInteger(t) && t >= 0 && t <= 0xffffffff)) {
    fail("INVALID_PAYLOAD", "token ids must be uint32");
  }
  checkShape(record, model);
  if (record.tokenIds.length > ctx.blockTokens) {
    fail(
      "SHAPE_MISMATCH",
      `${record.tokenIds.length} tokens; this server's blocks hold at most ${ctx.blockTokens}`,
    );
  }
  const sha = ctx.payloadDigest ?? crypto.createHash("sha256").update(record.payload).digest();
  if (!sha.equals(record.payloadSha256)) fail("INVALID_PAYLOAD", "payload_sha256 does not match the payload");
  const parsed = parseBlockPayload(record.payload, model);
  const a = headerMetadata(parsed.header);
  const b = headerMetadata(record);
  for (const field of Object.keys(b)) {
    if (a[field] !== b[field])
      fail("INVALID_PAYLOAD", `payload metadata ${field} differs from the block header`);
  }
  for (let i = 0; i < model.numLayers; i++) {
    for (const kind of layerParts(model, i)) {
      if (!allFinite(blockTensor(parsed, i, kind))) {
        fail("INVALID_PAYLOAD", `tensor ${tensorName(i, kind)} holds NaN or infinity`);
      }
    }
  }
  const layout = layoutVersionOf(model);
  if (record.parentKey.length > 0) {
    if (!blockKey(record.parentKey, record.tokenIds, model.fingerprint, layout).equals(record.key))
      fail("KEY_MISMATCH", "key differs from the key computed from parent key and token ids");
  } else if (ctx.root && !blockKey(ctx.root, record.tokenIds, model.fingerprint, layout).equals(record.key)) {
    // A first block's parent is the tenant's root, so its key is the one that depends on the tenant.
    fail("KEY_MISMATCH", FIRST_BLOCK_KEY_MISMATCH);
  }
  return parsed;
}
