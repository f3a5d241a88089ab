import * as crypto from "node:crypto";
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  BundleBlockSchema,
  BundleHeaderSchema,
  BundleManifestSchema,
  KVBlockSchema,
  type BundleBlock,
  type BundleHeader,
  type BundleManifest,
  type KVBlock,
} from "../../gen/kvpark/v1/kvblocks_pb";
import { KvparkError } from "../errors";
import type { LayerType } from "../model/config";
import { hasRecurrentLayers, type KVBlockRecord, type ModelShape } from "./block-codec";

/**
 * A bundle: a tenant's blocks (or some of them, with the chains that lead to them) in one file or
 * stream, as Export writes it and Import reads it (src/cache/FORMAT.md, "Bundle"). A 16-byte file
 * header, then framed entries: a BundleHeader (the model and block size), one KVBlock per block,
 * parents before children, in the wire format GetBlocks and PutBlocks use, and a BundleManifest
 * last (every block's key and payload checksum, and a checksum over the entries before it). Each
 * frame carries its kind, its index and a SHA-256 of itself, so a damaged, missing, reordered or
 * cut entry is named by its index. Written and read entry by entry: neither side holds the bundle.
 */

/** Version of the bundle format this build writes and reads. */
export const BUNDLE_FORMAT_VERSION = 1;
/** "KVPKBND\0": the first bytes of every bundle. */
export const BUNDLE_MAGIC = Buffer.from("KVPKBND\0", "latin1");
/** The file header: magic, u32 version, u32 flags. */
export const BUNDLE_FILE_HEADER_BYTES = 16;
/** An entry's frame before its body: u32 kind, u32 index, u32 body bytes. */
export const ENTRY_HEADER_BYTES = 12;
/** An entry's frame after its body: SHA-256 of the frame's header and body. */
export const ENTRY_CHECKSUM_BYTES = 32;
/** Largest entry body a reader accepts (the store's largest payload). */
export const ENTRY_BODY_BYTES_MAX = 1 << 30;

/** Entry kinds, as the u32 at the start of each frame. */
export const ENTRY_KINDS = { header: 1, block: 2, manifest: 3 } as const;
type EntryKind = keyof typeof ENTRY_KINDS;

/** One verified entry of a bundle, decoded. */
export type BundleEntry =
  | { kind: "header"; index: number; header: BundleHeader }
  | { kind: "block"; index: number; block: KVBlock }
  | { kind: "manifest"; index: number; manifest: BundleManifest };

/**
 * A bundle that cannot be read: KV_CORRUPT (DATA_LOSS) for damage (a checksum that does not match,
 * an entry missing, out of place or cut short), INVALID_ARGUMENT for bytes that are not a bundle of
 * this version. The message names the entry (its index, and a block's key when it can be read).
 */
export class BundleError extends KvparkError<"KV_CORRUPT" | "INVALID_ARGUMENT"> {
  constructor(code: "KV_CORRUPT" | "INVALID_ARGUMENT", message: string) {
    super(code, message);
    this.name = "BundleError";
  }
}

/** The first 16 hex digits of a key, as messages name blocks. */
export function shortKey(key: Uint8Array): string {
  return `${Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString("hex").slice(0, 16)}…`;
}

/** How messages name entry `index`, with its block's key when known. */
export function entryName(index: number, key?: Uint8Array): string {
  return key && key.length > 0 ? `bundle entry ${index} (block ${shortKey(key)})` : `bundle entry ${index}`;
}

function frame(kind: EntryKind, index: number, body: Uint8Array): { bytes: Buffer; checksum: Buffer } {
  const bytes = Buffer.allocUnsafe(ENTRY_HEADER_BYTES + body.length + ENTRY_CHECKSUM_BYTES);
  bytes.writeUInt32LE(ENTRY_KINDS[kind], 0);
  bytes.writeUInt32LE(index, 4);
  bytes.writeUInt32LE(body.length, 8);
  bytes.set(body, ENTRY_HEADER_BYTES);
  const end = ENTRY_HEADER_BYTES + body.length;
  const checksum = crypto.createHash("sha256").update(bytes.subarray(0, end)).digest();
  checksum.copy(bytes, end);
  return { bytes, checksum };
}

/** What a bundle's header says: the model and block size of its blocks, and when it was made. */
export interface BundleSource {
  model: ModelShape;
  blockTokens: number;
  createdUnixMs: number;
}

/**
 * Writes a bundle entry by entry: start() gives the file header and the header entry, block() one
 * block's entry, finish() the manifest. The bytes of each call follow those of the previous one.
 */
export class BundleWriter {
  private index = 0;
  private readonly entriesHash = crypto.createHash("sha256");
  private readonly blocks: BundleBlock[] = [];
  private readonly header: BundleHeader;

  constructor(source: BundleSource) {
    this.header = create(BundleHeaderSchema, {
      formatVersion: BUNDLE_FORMAT_VERSION,
      modelFingerprint: source.model.fingerprint,
      blockTokens: source.blockTokens,
      layerCount: source.model.numLayers,
      kvHeads: source.model.kvHeads,
      headDim: source.model.headDim,
      createdUnixMs: BigInt(source.createdUnixMs),
      ...(hasRecurrentLayers(source.model)
        ? {
            layerKinds: [...source.model.layerTypes!],
            snapshotConvShape: source.model.recurrentShape!.conv,
            snapshotDeltaShape: source.model.recurrentShape!.delta,
          }
        : {}),
    });
  }

  /** The bundle's first bytes: the file header and the header entry. */
  start(): Buffer {
    if (this.index !== 0) throw new Error("BundleWriter.start called twice");
    const fileHeader = Buffer.alloc(BUNDLE_FILE_HEADER_BYTES);
    BUNDLE_MAGIC.copy(fileHeader, 0);
    fileHeader.writeUInt32LE(BUNDLE_FORMAT_VERSION, 8);
    return Buffer.concat([fileHeader, this.entry("header", toBinary(BundleHeaderSchema, this.header))]);
  }

  /** A block's entry; blocks must come parents first (a chain's first block has an empty parent key). */
  block(record: KVBlockRecord): Buffer {
    if (this.index === 0) throw new Error("BundleWriter.block before start");
    const message = create(KVBlockSchema, {
      formatVersion: record.formatVersion,
      modelFingerprint: record.modelFingerprint,
      key: record.key,
      parentKey: record.parentKey,
      tokenIds: record.tokenIds,
      layerCount: record.layerCount,
      dtype: record.dtype,
      shape: record.shape,
      layerKinds: record.layerKinds,
      snapshotConvShape: record.snapshotConvShape,
      snapshotDeltaShape: record.snapshotDeltaShape,
      payload: record.payload,
      payloadSha256: record.payloadSha256,
    });
    this.blocks.push(
      create(BundleBlockSchema, {
        key: record.key,
        parentKey: record.parentKey,
        tokenCount: record.tokenIds.length,
        payloadSha256: record.payloadSha256,
      }),
    );
    return this.entry("block", toBinary(KVBlockSchema, message));
  }

  /** The manifest entry, the bundle's last bytes; `skippedBlocks` left out while exporting. */
  finish(skippedBlocks = 0): Buffer {
    const manifest = create(BundleManifestSchema, {
      formatVersion: this.header.formatVersion,
      modelFingerprint: this.header.modelFingerprint,
      blockTokens: this.header.blockTokens,
      blocks: this.blocks,
      entryCount: this.index,
      entriesSha256: this.entriesHash.copy().digest(),
      skippedBlocks,
    });
    return this.entry("manifest", toBinary(BundleManifestSchema, manifest));
  }

  /** Blocks written so far. */
  get blockCount(): number {
    return this.blocks.length;
  }

  private entry(kind: EntryKind, body: Uint8Array): Buffer {
    const { bytes, checksum } = frame(kind, this.index++, body);
    if (kind !== "manifest") this.entriesHash.update(checksum);
    return bytes;
  }
}

function corrupt(message: string): never {
  throw new BundleError("KV_CORRUPT", message);
}

function invalid(message: string): never {
  throw new BundleError("INVALID_ARGUMENT", message);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b);
}

/**
 * Reads a bundle from its bytes as they arrive, in pieces of any size: push() returns the entries
 * the piece completed, each checked (its checksum, its index, its place: the header first, blocks
 * with their parent earlier in the bundle, the manifest last and nothing after it); the manifest is
 * checked against everything before it. end() refuses a bundle that stopped before its manifest.
 * Every refusal is a BundleError naming the entry. The blocks themselves (payload, model, key) are
 * for the receiver to verify (verifyRecord).
 */
export class BundleReader {
  private readonly pieces: Buffer[] = [];
  private pieceBytes = 0;
  /** Bytes consumed so far. */
  private offset = 0;
  private started = false;
  private index = 0;
  private header?: BundleHeader;
  private done = false;
  private readonly entriesHash = crypto.createHash("sha256");
  private readonly blocks: BundleBlock[] = [];
  private readonly keys = new Set<string>();

  /** Takes the next bytes of the bundle; returns the entries they completed, in order. */
  push(chunk: Uint8Array): BundleEntry[] {
    if (chunk.length === 0) return [];
    if (this.done) invalid(`bundle has bytes after its manifest (entry ${this.index - 1})`);
    this.pieces.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.pieceBytes += chunk.length;
    const out: BundleEntry[] = [];
    if (!this.started) {
      const head = this.take(BUNDLE_FILE_HEADER_BYTES);
      if (!head) return out;
      this.checkFileHeader(head);
      this.started = true;
    }
    while (!this.done) {
      const head = this.peek(ENTRY_HEADER_BYTES);
      if (!head) break;
      const bodyBytes = head.readUInt32LE(8);
      if (bodyBytes > ENTRY_BODY_BYTES_MAX) {
        corrupt(`${entryName(this.index)} is damaged: its frame claims a body of ${bodyBytes} bytes`);
      }
      const bytes = this.take(ENTRY_HEADER_BYTES + bodyBytes + ENTRY_CHECKSUM_BYTES);
      if (!bytes) break;
      out.push(this.entry(bytes, bodyBytes));
    }
    if (this.done && this.pieceBytes > 0) {
      invalid(`bundle has bytes after its manifest (entry ${this.index - 1})`);
    }
    return out;
  }

  /** The bundle has no more bytes: refuses it unless its manifest was read. */
  end(): void {
    if (this.done) return;
    if (!this.started) {
      corrupt(
        `bundle is truncated: ${this.pieceBytes} bytes, fewer than its ${BUNDLE_FILE_HEADER_BYTES}-byte file header`,
      );
    }
    if (this.pieceBytes > 0) {
      corrupt(
        `bundle is truncated in ${entryName(this.index)}: the bundle ends ${this.pieceBytes} bytes into it`,
      );
    }
    if (this.index === 0) corrupt("bundle is truncated after its file header: it holds no entry");
    corrupt(
      `bundle is truncated after ${entryName(this.index - 1)}: what follows it, at least the manifest that ends a bundle, is missing`,
    );
  }

  /** Whether the manifest was read: the bundle is complete. */
  get complete(): boolean {
    return this.done;
  }

  /** Bytes read so far. */
  get bytesRead(): number {
    return this.offset;
  }

  private checkFileHeader(head: Buffer): void {
    if (!head.subarray(0, 8).equals(BUNDLE_MAGIC))
      invalid("not a kvpark bundle: the file header's magic is wrong");
    const version = head.readUInt32LE(8);
    if (version !== BUNDLE_FORMAT_VERSION) {
      invalid(`bundle format version ${version}; this server reads ${BUNDLE_FORMAT_VERSION}`);
    }
    const flags = head.readUInt32LE(12);
    if (flags !== 0)
      invalid(`bundle file header has flags ${flags}; version ${BUNDLE_FORMAT_VERSION} defines none`);
  }

  private entry(bytes: Buffer, bodyBytes: number): BundleEntry {
    const index = this.index;
    const end = ENTRY_HEADER_BYTES + bodyBytes;
    const body = bytes.subarray(ENTRY_HEADER_BYTES, end);
    const checksum = crypto.createHash("sha256").update(bytes.subarray(0, end)).digest();
    if (!checksum.equals(bytes.subarray(end))) {
      const key = bytes.readUInt32LE(0) === ENTRY_KINDS.block ? keyIfBlock(body) : undefined;
      corrupt(`${entryName(index, key)} is damaged: its checksum does not match`);
    }
    const numbered = bytes.readUInt32LE(4);
    if (numbered !== index) {
      corrupt(`${entryName(index)} is numbered ${numbered}: an entry is missing or out of order`);
    }
    const kind = bytes.readUInt32LE(0);
    this.index++;
    if (index === 0) {
      if (kind !== ENTRY_KINDS.header) invalid(`${entryName(0)} is not the bundle header (kind ${kind})`);
      this.entriesHash.update(checksum);
      this.header = decode(BundleHeaderSchema, body, index, "BundleHeader");
      if (this.header.formatVersion !== BUNDLE_FORMAT_VERSION) {
        invalid(
          `${entryName(0)}: bundle format version ${this.header.formatVersion}; this server reads ${BUNDLE_FORMAT_VERSION}`,
        );
      }
      return { kind: "header", index, header: this.header };
    }
    if (kind === ENTRY_KINDS.block) {
      this.entriesHash.update(checksum);
      const block = decode(KVBlockSchema, body, index, "KVBlock");
      const name = entryName(index, block.key);
      const parentHex = Buffer.from(block.parentKey).toString("hex");
      if (block.parentKey.length > 0 && !this.keys.has(parentHex)) {
        invalid(`${name}: its parent block is not earlier in the bundle`);
      }
      const keyHex = Buffer.from(block.key).toString("hex");
      if (this.keys.has(keyHex)) invalid(`${name}: the block is in the bundle twice`);
      this.keys.add(keyHex);
      this.blocks.push(
        create(BundleBlockSchema, {
          key: block.key,
          parentKey: block.parentKey,
          tokenCount: block.tokenIds.length,
          payloadSha256: block.payloadSha256,
        }),
      );
      return { kind: "block", index, block };
    }
    if (kind === ENTRY_KINDS.manifest) {
      const manifest = decode(BundleManifestSchema, body, index, "BundleManifest");
      this.checkManifest(manifest, index);
      this.done = true;
      return { kind: "manifest", index, manifest };
    }
    invalid(`${entryName(index)} has kind ${kind}, neither a block (2) nor the manifest (3)`);
  }

  private checkManifest(m: BundleManifest, index: number): void {
    const name = `${entryName(index)} (the manifest)`;
    const h = this.header!;
    if (m.entryCount !== index)
      corrupt(`${name} counts ${m.entryCount} entries before it; the bundle holds ${index}`);
    if (!sameBytes(m.entriesSha256, this.entriesHash.digest())) {
      corrupt(`${name}: the checksum over the entries before it does not match`);
    }
    if (
      m.formatVersion !== h.formatVersion ||
      m.modelFingerprint !== h.modelFingerprint ||
      m.blockTokens !== h.blockTokens
    ) {
      corrupt(`${name} describes another model or block size than the bundle header`);
    }
    if (m.blocks.length !== this.blocks.length) {
      corrupt(`${name} lists ${m.blocks.length} blocks; the bundle holds ${this.blocks.length}`);
    }
    m.blocks.forEach((listed, i) => {
      const read = this.blocks[i];
      if (
        !sameBytes(listed.key, read.key) ||
        !sameBytes(listed.parentKey, read.parentKey) ||
        listed.tokenCount !== read.tokenCount ||
        !sameBytes(listed.payloadSha256, read.payloadSha256)
      ) {
        corrupt(`${name} lists another block than ${entryName(i + 1, read.key)}`);
      }
    });
  }

  /** The next `n` unconsumed bytes, consumed; null when fewer have arrived. */
  private take(n: number): Buffer | null {
    const bytes = this.peek(n);
    if (!bytes) return null;
    const rest = this.pieces[0].subarray(n);
    if (rest.length > 0) this.pieces[0] = rest;
    else this.pieces.shift();
    this.pieceBytes -= n;
    this.offset += n;
    return bytes;
  }

  /** The next `n` unconsumed bytes, not consumed; null when fewer have arrived. Joins pieces once. */
  private peek(n: number): Buffer | null {
    if (this.pieceBytes < n) return null;
    if (this.pieces[0].length < n) {
      const joined = Buffer.concat(this.pieces, this.pieceBytes);
      this.pieces.length = 0;
      this.pieces.push(joined);
    }
    return this.pieces[0].subarray(0, n);
  }
}

function decode<T extends DescMessage>(
  schema: T,
  body: Buffer,
  index: number,
  what: string,
): MessageShape<T> {
  try {
    return fromBinary(schema, body);
  } catch {
    return invalid(`${entryName(index)} is not a valid ${what} message`);
  }
}

/** The key of a block entry's body, when it decodes; damaged bodies often still do. */
function keyIfBlock(body: Buffer): Uint8Array | undefined {
  try {
    return fromBinary(KVBlockSchema, body).key;
  } catch {
    return undefined;
  }
}

/** Checks a bundle header against the model and block size of the node that reads it. */
export function checkBundleHeader(header: BundleHeader, model: ModelShape, blockTokens: number): void {
  if (header.modelFingerprint !== model.fingerprint) {
    throw new KvparkError(
      "MODEL_MISMATCH",
      `${entryName(0)}: the bundle holds blocks of model ${header.modelFingerprint.slice(0, 40)}; served model is ${model.fingerprint}`,
    );
  }
  if (header.blockTokens !== blockTokens) {
    throw new KvparkError(
      "FAILED_PRECONDITION",
      `${entryName(0)}: the bundle's blocks hold ${header.blockTokens} tokens; this server's hold ${blockTokens} (--block-tokens)`,
    );
  }
  if (
    header.layerCount !== model.numLayers ||
    header.kvHeads !== model.kvHeads ||
    header.headDim !== model.headDim ||
    header.layerKinds.join() !== (hasRecurrentLayers(model) ? model.layerTypes!.join() : "")
  ) {
    throw new KvparkError(
      "FAILED_PRECONDITION",
      `${entryName(0)}: the bundle's KV shape (${header.layerCount} layers, ${header.kvHeads} KV heads, head_dim ${header.headDim}) is not the served model's`,
    );
  }
}

/** The model shape a bundle header describes. */
export function bundleModel(header: BundleHeader): ModelShape {
  return {
    fingerprint: header.modelFingerprint,
    numLayers: header.layerCount,
    kvHeads: header.kvHeads,
    headDim: header.headDim,
    ...(header.layerKinds.length > 0
      ? {
          layerTypes: header.layerKinds as LayerType[],
          recurrentShape: { conv: [...header.snapshotConvShape], delta: [...header.snapshotDeltaShape] },
        }
      : {}),
  };
}
