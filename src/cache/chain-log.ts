import { BLOCK_KEY_BYTES } from "./block-key";
import { nodeFileIo, type FileIo } from "./file-io";
import { FramedFile, readFramed, recordsWritten, type FrameFormat, type FramedRead } from "./framed-log";

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

/** Version of the chain log format. */
export const CHAIN_LOG_VERSION = 1;
const FIXED_BODY_BYTES = 3 * BLOCK_KEY_BYTES + 8;
// A record of more tokens than any block could hold is damage, not data.
const TOKENS_PER_RECORD_MAX = 1 << 16;
// Records a failed append could not write, kept to retry with the next append; beyond this many
// they are left to the next open, which reads their blocks back from the store.
const PENDING_MAX = 4096;

const FORMAT: FrameFormat<ChainRecord> = {
  magic: Buffer.from("KVPKCHN\0", "latin1"),
  version: CHAIN_LOG_VERSION,
  bodyBytesMin: FIXED_BODY_BYTES + 4,
  bodyBytesMax: FIXED_BODY_BYTES + 4 * TOKENS_PER_RECORD_MAX,
  plausible: (bytes, at, bodyBytes) => bodyBytes === FIXED_BODY_BYTES + 4 * bytes.readUInt32LE(at + 100),
  decode: decodeBody,
  encode: encodeBody,
};

/** A chain log as read, and the size of the file it was read from. */
export interface ChainLogContents extends FramedRead<ChainRecord> {
  fileBytes: number;
}

/**
 * The sidecar index of the SSD tier: an append-only file of ChainRecords next to the block store,
 * so that a restart knows every stored block's parent and tokens without reading the blocks. It is
 * a cache of what the store's records say, never the truth: at open the tier reads back from the
 * store every block the log does not describe, drops records of blocks the store lacks, and
 * rewrites the log (ssd-open.ts). Framing, damage and torn appends: framed-log.ts; bytes:
 * FORMAT.md.
 *
 *   body  key (32), parent (32), root (32), u32 storedBytes, u32 tokenCount, tokenCount x u32
 */
export class ChainLog {
  private pending: ChainRecord[] = [];

  private constructor(private readonly framed: FramedFile<ChainRecord>) {}

  get file(): string {
    return this.framed.file;
  }

  /** Records in the file, live or not; drives compaction. */
  get recordCount(): number {
    return this.framed.recordCount;
  }

  /**
   * Reads a log, skipping damaged records (the reader resynchronizes on the next record that
   * verifies and that `accept` takes); null when the file is missing or its header is not a
   * version-1 chain log header.
   */
  static read(
    file: string,
    io: FileIo = nodeFileIo,
    accept?: (record: ChainRecord, afterDamage: boolean) => boolean,
  ): ChainLogContents | null {
    const bytes = io.read(file);
    const read = bytes && readFramed(bytes, FORMAT, accept);
    return read ? { ...read, fileBytes: bytes.length } : null;
  }

  /** Writes a fresh log holding `records` (atomically: temp file, fsync, rename) and opens it. */
  static rewrite(file: string, records: Iterable<ChainRecord>, io: FileIo = nodeFileIo): ChainLog {
    return new ChainLog(FramedFile.rewrite(file, FORMAT, records, io));
  }

  /** Opens an existing log to append after its first `end` bytes, which hold `records` records. */
  static reopen(file: string, end: number, records: number, io: FileIo = nodeFileIo): ChainLog {
    return new ChainLog(FramedFile.reopen(file, FORMAT, end, records, io));
  }

  /**
   * Appends records, after those an earlier failed append could not write. A failed write leaves
   * the log ending in whole records (framed-log.ts), keeps the unwritten records for the next
   * append, and is thrown.
   */
  append(records: readonly ChainRecord[]): void {
    const all = this.pending.length > 0 ? [...this.pending, ...records] : records;
    this.pending = [];
    try {
      this.framed.append(all);
    } catch (err) {
      this.pending = all.slice(recordsWritten(err)).slice(-PENDING_MAX);
      throw err;
    }
  }

  /** fdatasync on the I/O thread pool. */
  sync(): Promise<void> {
    return this.framed.sync();
  }

  close(): void {
    this.framed.close();
  }
}

function encodeBody(r: ChainRecord): Buffer {
  const out = Buffer.allocUnsafe(FIXED_BODY_BYTES + r.tokenIds.length * 4);
  r.key.copy(out, 0);
  r.parent.copy(out, 32);
  r.root.copy(out, 64);
  out.writeUInt32LE(r.storedBytes, 96);
  out.writeUInt32LE(r.tokenIds.length, 100);
  for (let i = 0; i < r.tokenIds.length; i++) out.writeUInt32LE(r.tokenIds[i], 104 + i * 4);
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
