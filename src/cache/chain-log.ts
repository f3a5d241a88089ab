import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { BLOCK_KEY_BYTES } from "./block-key";

/** What the chain index knows of a block on SSD: enough to walk prompts without reading payloads. */
export interface ChainRecord {
  key: Buffer;
  /** The previous block's key, or the root key for the first block of a chain. */
  parent: Buffer;
  /** The chain's root key (derived from tenant and model), for tenant checks. */
  root: Buffer;
  tokenIds: Uint32Array;
  /** Bytes of the stored block (envelope and payload). */
  storedBytes: number;
}

const MAGIC = Buffer.from("KVPKCHN\0", "latin1");
/** Version of the chain log format. */
export const CHAIN_LOG_VERSION = 1;
const FILE_HEADER_BYTES = 16;
const CHECKSUM_BYTES = 8;
const FIXED_BODY_BYTES = 3 * BLOCK_KEY_BYTES + 8;
// A record of more tokens than any block could hold is damage, not data.
const TOKENS_PER_RECORD_MAX = 1 << 16;

/**
 * The sidecar index of the SSD tier: an append-only file of ChainRecords written next to the
 * block store, so a restart knows every stored block's parent and tokens without reading the
 * blocks (oMLX rescans every file header; LMCache forgets its disk index).
 *
 * Layout (little-endian):
 *   header  0 magic "KVPKCHN\0"  8 u32 version  12 u32 flags (0)
 *   record  u32 bodyBytes, body, first 8 bytes of SHA-256(body)
 *   body    key (32), parent (32), root (32), u32 storedBytes, u32 tokenCount, tokenCount x u32
 * A record is written before its block is handed to the store, so after a crash the log may
 * name blocks the store never got (filtered out at open by asking the store) and may end in a
 * torn record (reading stops there); it never misses a block the store holds, barring power
 * loss before the log's fdatasync.
 */
export class ChainLog {
  private fd: number;
  /** Records in the file, live or not; drives compaction. */
  recordCount = 0;

  private constructor(
    readonly file: string,
    fd: number,
  ) {
    this.fd = fd;
  }

  /**
   * Reads the records of a log, stopping at a torn or damaged record; null when the file is
   * missing or its header is unreadable (the caller then rebuilds from the store).
   */
  static read(file: string): ChainRecord[] | null {
    let bytes: Buffer;
    try {
      bytes = fs.readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw err;
    }
    if (
      bytes.length < FILE_HEADER_BYTES ||
      !bytes.subarray(0, 8).equals(MAGIC) ||
      bytes.readUInt32LE(8) !== CHAIN_LOG_VERSION
    ) {
      return null;
    }
    const records: ChainRecord[] = [];
    let at = FILE_HEADER_BYTES;
    while (at + 4 <= bytes.length) {
      const bodyBytes = bytes.readUInt32LE(at);
      const end = at + 4 + bodyBytes + CHECKSUM_BYTES;
      if (bodyBytes < FIXED_BODY_BYTES || end > bytes.length) break; // torn tail
      const body = bytes.subarray(at + 4, at + 4 + bodyBytes);
      const sum = crypto.createHash("sha256").update(body).digest().subarray(0, CHECKSUM_BYTES);
      if (!sum.equals(bytes.subarray(end - CHECKSUM_BYTES, end))) break;
      const record = decodeBody(body);
      if (!record) break;
      records.push(record);
      at = end;
    }
    return records;
  }

  /** Writes a fresh log holding `records` (atomically: temp file, fsync, rename) and opens it. */
  static rewrite(file: string, records: Iterable<ChainRecord>): ChainLog {
    const temp = `${file}.tmp`;
    const fd = fs.openSync(temp, "w", 0o600);
    let count = 0;
    try {
      const header = Buffer.alloc(FILE_HEADER_BYTES);
      MAGIC.copy(header, 0);
      header.writeUInt32LE(CHAIN_LOG_VERSION, 8);
      const pieces: Buffer[] = [header];
      for (const record of records) {
        pieces.push(encodeRecord(record));
        count++;
      }
      writeAll(fd, Buffer.concat(pieces));
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, file);
    syncDir(path.dirname(file));
    const log = new ChainLog(file, fs.openSync(file, "a", 0o600));
    log.recordCount = count;
    return log;
  }

  /** Appends records; durable once sync() resolves. */
  append(records: readonly ChainRecord[]): void {
    if (records.length === 0) return;
    writeAll(this.fd, Buffer.concat(records.map(encodeRecord)));
    this.recordCount += records.length;
  }

  /** fdatasync on the I/O thread pool. */
  sync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

function encodeRecord(r: ChainRecord): Buffer {
  const bodyBytes = FIXED_BODY_BYTES + r.tokenIds.length * 4;
  const out = Buffer.allocUnsafe(4 + bodyBytes + CHECKSUM_BYTES);
  out.writeUInt32LE(bodyBytes, 0);
  r.key.copy(out, 4);
  r.parent.copy(out, 4 + 32);
  r.root.copy(out, 4 + 64);
  out.writeUInt32LE(r.storedBytes, 4 + 96);
  out.writeUInt32LE(r.tokenIds.length, 4 + 100);
  for (let i = 0; i < r.tokenIds.length; i++) out.writeUInt32LE(r.tokenIds[i], 4 + 104 + i * 4);
  const body = out.subarray(4, 4 + bodyBytes);
  crypto
    .createHash("sha256")
    .update(body)
    .digest()
    .copy(out, 4 + bodyBytes, 0, CHECKSUM_BYTES);
  return out;
}

function decodeBody(body: Buffer): ChainRecord | null {
  const tokenCount = body.readUInt32LE(100);
  if (
    tokenCount === 0 ||
    tokenCount > TOKENS_PER_RECORD_MAX ||
    body.length !== FIXED_BODY_BYTES + tokenCount * 4
  ) {
    return null;
  }
  const tokenIds = new Uint32Array(tokenCount);
  for (let i = 0; i < tokenCount; i++) tokenIds[i] = body.readUInt32LE(104 + i * 4);
  return {
    key: Buffer.from(body.subarray(0, 32)),
    parent: Buffer.from(body.subarray(32, 64)),
    root: Buffer.from(body.subarray(64, 96)),
    storedBytes: body.readUInt32LE(96),
    tokenIds,
  };
}

function writeAll(fd: number, bytes: Buffer): void {
  let written = 0;
  while (written < bytes.length) written += fs.writeSync(fd, bytes, written);
}

function syncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
