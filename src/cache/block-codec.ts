import * as crypto from "node:crypto";
import type { LayerType } from "../model/config";
import { KV_LAYOUT_VERSION, KV_LAYOUT_VERSION_RECURRENT } from "./block-key";
import { BlockError } from "./errors";
import { encodeHeader, type SafetensorsFile, type TensorSpec } from "../util/safetensors";

/**
 * Newest version of the block format (proto KVBlock.format_version) this build reads. Version 1
 * holds keys and values of every layer; version 2 describes each layer's kind and holds, for a
 * recurrent layer, its state after the block's last token. Models without recurrent layers keep
 * writing version 1 (their blocks and keys are unchanged); models with them write version 2.
 */
export const BLOCK_FORMAT_VERSION = 2;

/** The first block format: keys and values of every layer. */
export const BLOCK_FORMAT_VERSION_V1 = 1;

/** Shapes of one recurrent layer's snapshot, without the leading batch dimension. */
export interface RecurrentShape {
  /** [kernel - 1, convChannels]: the convolution's carried input rows. */
  conv: number[];
  /** [valueHeads, valueHeadDim, keyHeadDim]: the delta rule's state. */
  delta: number[];
}

/** Element type of every block tensor: the engine computes and caches in float32. */
export const BLOCK_DTYPE = "F32";

/** What a block must match to belong to the served model. */
export interface ModelShape {
  /** Hex SHA-256 identifying the model's weights. */
  fingerprint: string;
  numLayers: number;
  kvHeads: number;
  headDim: number;
  /**
   * Per layer its kind (config `layer_types`); absent means every layer holds keys and values.
   * "linear_attention" layers are recurrent: a block holds their state after its last token.
   */
  layerTypes?: readonly LayerType[];
  /** Snapshot shapes of the recurrent layers; needed when some layer is "linear_attention". */
  recurrentShape?: RecurrentShape | null;
  /**
   * Window of the "sliding_attention" layers in tokens: a query at p sees keys p - W + 1 ..= p,
   * so a restore leaves out their older rows. Null or absent: none.
   */
  slidingWindow?: number | null;
}

/** True when the model has recurrent layers, whose blocks carry snapshots (format version 2). */
export function hasRecurrentLayers(model: ModelShape): boolean {
  return model.layerTypes?.includes("linear_attention") ?? false;
}

/** Whether layer i attends through a sliding window (the model's slidingWindow). */
export function isSlidingLayer(model: ModelShape, layer: number): boolean {
  return !!model.slidingWindow && model.layerTypes?.[layer] === "sliding_attention";
}

/** Whether layer i is recurrent. */
export function isRecurrentLayer(model: ModelShape, layer: number): boolean {
  return model.layerTypes?.[layer] === "linear_attention";
}

/** The block format version a model's blocks are written in: 2 with recurrent layers, else 1. */
export function formatVersionOf(model: ModelShape): number {
  return hasRecurrentLayers(model) ? BLOCK_FORMAT_VERSION : BLOCK_FORMAT_VERSION_V1;
}

/** The KV layout version hashed into a model's keys (block-key.ts). */
export function layoutVersionOf(model: ModelShape): number {
  return hasRecurrentLayers(model) ? KV_LAYOUT_VERSION_RECURRENT : KV_LAYOUT_VERSION;
}

/** The names of layer i's tensors in a payload's order: keys and values, or conv and delta. */
export function layerParts(model: ModelShape, layer: number): readonly LayerPart[] {
  return isRecurrentLayer(model, layer) ? SNAPSHOT_PARTS : KV_PARTS;
}

/** What one tensor of a block holds. */
export type LayerPart = "keys" | "values" | "conv" | "delta";
const KV_PARTS = ["keys", "values"] as const;
const SNAPSHOT_PARTS = ["conv", "delta"] as const;

/** Bytes of one recurrent layer's snapshot, float32. */
export function snapshotBytes(shape: RecurrentShape): number {
  return (shape.conv.reduce((a, b) => a * b, 1) + shape.delta.reduce((a, b) => a * b, 1)) * 4;
}

/** A block's fields besides its tensors, as in the proto message KVBlock. */
export interface BlockHeader {
  formatVersion: number;
  modelFingerprint: string;
  key: Buffer;
  /** Key of the previous block; empty for the first block of a prompt (its parent is the tenant's root). */
  parentKey: Buffer;
  tokenIds: number[];
  layerCount: number;
  dtype: string;
  /** [kvHeads, tokens, headDim]: the shape of every keys and values tensor. */
  shape: number[];
  /** Format version 2: every layer's kind (`layer_types` spelling). Empty in version 1. */
  layerKinds: string[];
  /** Format version 2 with recurrent layers: each one's conv snapshot shape. Else empty. */
  snapshotConvShape: number[];
  /** Format version 2 with recurrent layers: each one's delta-rule state shape. Else empty. */
  snapshotDeltaShape: number[];
}

/** A whole block as it travels on the wire (proto KVBlock). */
export interface KVBlockRecord extends BlockHeader {
  /** A safetensors file: layers.<i>.keys and layers.<i>.values, metadata repeating the header. */
  payload: Buffer;
  payloadSha256: Buffer;
}

/**
 * A block as received: bytes fields may be any Uint8Array (protobuf-es gives plain ones),
 * repeated fields any array-like.
 */
export interface KVBlockInput {
  formatVersion: number;
  modelFingerprint: string;
  key: Uint8Array;
  parentKey: Uint8Array;
  tokenIds: ArrayLike<number>;
  layerCount: number;
  dtype: string;
  shape: ArrayLike<number>;
  layerKinds?: ArrayLike<string>;
  snapshotConvShape?: ArrayLike<number>;
  snapshotDeltaShape?: ArrayLike<number>;
  payload: Uint8Array;
  payloadSha256: Uint8Array;
}

/** A Buffer over the same memory (no copy). */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The record with Buffers and plain arrays, sharing the input's bytes. */
export function normalizeRecord(input: KVBlockInput): KVBlockRecord {
  return {
    formatVersion: input.formatVersion,
    modelFingerprint: input.modelFingerprint,
    key: asBuffer(input.key),
    parentKey: asBuffer(input.parentKey),
    tokenIds: Array.from(input.tokenIds),
    layerCount: input.layerCount,
    dtype: input.dtype,
    shape: Array.from(input.shape),
    layerKinds: Array.from(input.layerKinds ?? []),
    snapshotConvShape: Array.from(input.snapshotConvShape ?? []),
    snapshotDeltaShape: Array.from(input.snapshotDeltaShape ?? []),
    payload: asBuffer(input.payload),
    payloadSha256: asBuffer(input.payloadSha256),
  };
}

/** A payload that passed parsing: its header as the metadata states it, and its tensors. */
export interface ParsedBlock {
  header: BlockHeader;
  file: SafetensorsFile;
  payload: Buffer;
}

/** Name of a layer's tensor inside a payload. */
export function tensorName(layer: number, kind: LayerPart): string {
  return `layers.${layer}.${kind}`;
}

/** Layers holding keys and values (every layer but the recurrent ones). */
export function attentionLayerCount(model: ModelShape): number {
  return model.layerTypes ? model.layerTypes.filter((t) => t !== "linear_attention").length : model.numLayers;
}

/** Bytes of `tokens` tokens' keys and values over the attention layers, float32. */
export function kvDataBytes(model: ModelShape, tokens: number): number {
  return attentionLayerCount(model) * 2 * model.kvHeads * tokens * model.headDim * 4;
}

/**
 * Bytes of one block's data: keys and values of the attention layers in float32 and, with
 * recurrent layers, one snapshot per recurrent layer (constant per block).
 */
export function blockDataBytes(model: ModelShape, tokens: number): number {
  const recurrent = model.numLayers - attentionLayerCount(model);
  const snapshots =
    recurrent > 0 && model.recurrentShape ? recurrent * snapshotBytes(model.recurrentShape) : 0;
  return kvDataBytes(model, tokens) + snapshots;
}

/** The header of a block of `model` with these tokens. */
export function makeHeader(
  model: ModelShape,
  key: Buffer,
  parentKey: Buffer,
  tokenIds: number[],
): BlockHeader {
  const v2 = formatVersionOf(model) === 2;
  return {
    formatVersion: formatVersionOf(model),
    modelFingerprint: model.fingerprint,
    key,
    parentKey,
    tokenIds,
    layerCount: model.numLayers,
    dtype: BLOCK_DTYPE,
    shape: [model.kvHeads, tokenIds.length, model.headDim],
    layerKinds: v2 ? [...model.layerTypes!] : [],
    snapshotConvShape: v2 ? [...model.recurrentShape!.conv] : [],
    snapshotDeltaShape: v2 ? [...model.recurrentShape!.delta] : [],
  };
}

/** The header fields as safetensors metadata strings. */
export function headerMetadata(h: BlockHeader): Record<string, string> {
  const v2: Record<string, string> =
    h.formatVersion === BLOCK_FORMAT_VERSION_V1
      ? {}
      : {
          layer_kinds: JSON.stringify(h.layerKinds),
          snapshot_conv_shape: JSON.stringify(h.snapshotConvShape),
          snapshot_delta_shape: JSON.stringify(h.snapshotDeltaShape),
        };
  return {
    ...v2,
    format_version: String(h.formatVersion),
    kv_layout_version: String(
      h.layerKinds.includes("linear_attention") ? KV_LAYOUT_VERSION_RECURRENT : KV_LAYOUT_VERSION,
    ),
    model_fingerprint: h.modelFingerprint,
    key: h.key.toString("hex"),
    parent_key: h.parentKey.toString("hex"),
    token_ids: JSON.stringify(h.tokenIds),
    layer_count: String(h.layerCount),
    dtype: h.dtype,
    shape: JSON.stringify(h.shape),
  };
}

/**
 * The safetensors header of a block payload; the data that follows is, for each layer in order,
 * the keys then the values tensor, each [kvHeads, tokens, headDim] float32 row-major.
 */
export function encodePayloadHeader(h: BlockHeader): Buffer {
  const tensors: TensorSpec[] = [];
  for (let i = 0; i < h.layerCount; i++) {
    for (const kind of headerLayerParts(h, i)) {
      const shape = tensorShape(h, kind);
      const byteLength = shape.reduce((a, b) => a * b, 4);
      tensors.push({ name: tensorName(i, kind), dtype: "F32", shape, byteLength });
    }
  }
  return encodeHeader(tensors, headerMetadata(h));
}

/** The parts of layer i a block with this header holds. */
function headerLayerParts(h: BlockHeader, layer: number): readonly LayerPart[] {
  return h.layerKinds[layer] === "linear_attention" ? SNAPSHOT_PARTS : KV_PARTS;
}

/** The shape of a tensor of this part in a block with this header. */
export function tensorShape(h: BlockHeader, kind: LayerPart): number[] {
  if (kind === "conv") return h.snapshotConvShape;
  if (kind === "delta") return h.snapshotDeltaShape;
  return h.shape;
}

/** The wire record of a payload: header fields plus the payload's SHA-256. */
export function toRecord(h: BlockHeader, payload: Buffer): KVBlockRecord {
  return { ...h, payload, payloadSha256: crypto.createHash("sha256").update(payload).digest() };
}

/** Bytes of one tensor of a parsed block (a view into the payload). */
export function blockTensor(block: ParsedBlock, layer: number, kind: LayerPart): Buffer {
  const info = block.file.tensors.get(tensorName(layer, kind))!;
  return block.payload.subarray(block.file.dataOffset + info.begin, block.file.dataOffset + info.end);
}

/** Bytes of the first `tokens` token rows of head `head` of one tensor: [tokens, headDim] float32. */
export function headRows(tensor: Buffer, shape: number[], head: number, tokens: number): Buffer {
  const [, blockTokens, headDim] = shape;
  const rowBytes = headDim * 4;
  const start = head * blockTokens * rowBytes;
  return tensor.subarray(start, start + tokens * rowBytes);
}

// ---- The stored form: how a block sits in the SSD store ------------------------------------

/** "KVPKBLK\0": first bytes of every stored block. */
const STORED_MAGIC = Buffer.from("KVPKBLK\0", "latin1");
/** Version of the stored envelope. */
export const STORED_ENVELOPE_VERSION = 1;
/** Bytes before the payload: magic, version, flags, root key, reserved zeros. */
export const STORED_ENVELOPE_BYTES = 64;

/**
 * The envelope before a stored payload. It records the chain's root key, which the payload
 * leaves out (a first block's parent_key is empty on the wire because the root is derived from
 * the tenant), so the chain index can be rebuilt from the store alone.
 *   0  magic "KVPKBLK\0"   8  u32 envelope version   12  u32 flags (0)
 *   16 root key (32)       48 reserved zeros (16)    64  payload
 */
export function storedEnvelope(root: Buffer): Buffer {
  const out = Buffer.alloc(STORED_ENVELOPE_BYTES);
  STORED_MAGIC.copy(out, 0);
  out.writeUInt32LE(STORED_ENVELOPE_VERSION, 8);
  root.copy(out, 16);
  return out;
}

function fail(code: ConstructorParameters<typeof BlockError>[0], message: string): never {
  throw new BlockError(code, message);
}

/** Splits a stored block into root key and payload; throws BlockError("CORRUPT") on a bad envelope. */
export function openEnvelope(stored: Buffer): { root: Buffer; payload: Buffer } {
  if (stored.length < STORED_ENVELOPE_BYTES || !stored.subarray(0, 8).equals(STORED_MAGIC)) {
    fail("CORRUPT", "stored block has no envelope");
  }
  const version = stored.readUInt32LE(8);
  if (version !== STORED_ENVELOPE_VERSION) fail("UNSUPPORTED_VERSION", `stored envelope version ${version}`);
  return { root: stored.subarray(16, 48), payload: stored.subarray(STORED_ENVELOPE_BYTES) };
}
