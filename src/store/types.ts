import type { StoreErrorCode } from "./errors";

/** Bytes in a block key (a hash of the block's token chain). */
export const KEY_BYTES = 32;

/** One block to write. The payload must not be modified until put() resolves. */
export interface PutEntry {
  key: Buffer;
  payload: Buffer;
}

/** Per-entry outcome of put(): "persisted" means durable under the store's fsync policy. */
export type PutResult = "persisted" | StoreErrorCode;

/** Per-key outcome of getMany(): the verified payload, or why there is none. */
export type GetResult = Buffer | StoreErrorCode;

/** Outcome of delete(). */
export type DeleteResult = "deleted" | StoreErrorCode;

/** Outcome of pin(). */
export type PinResult = "pinned" | StoreErrorCode;

/** A hard pin lasts until unpin(); a soft pin expires after ttlMs. */
export type PinKind = "hard" | { ttlMs: number };

/** Options for opening a store directory. */
export interface StoreOptions {
  /** Cap on the bytes the store's files occupy, counted in whole 4 KiB blocks per file. */
  bytesMax: number;
  /** "batch": one fdatasync per write batch before reporting "persisted"; "none": page cache only. */
  fsync: "batch" | "none";
  /** Size of one append-only segment file; default 64 MiB. */
  segmentBytes?: number;
  /** Appended bytes between index checkpoints (bounds crash recovery work); default 256 MiB. */
  checkpointEveryBytes?: number;
  /** Threads that read payloads in parallel for getMany(); default 8. */
  readThreads?: number;
  /** Cap on pinned bytes; default bytesMax / 2. */
  pinnedBytesMax?: number;
  /**
   * The clock soft pins expire by, in Unix milliseconds; default Date.now. The store reads it
   * before each call it makes into the native core, so tests can move time instead of sleeping.
   */
  nowMs?: () => number;
}

/** Counters and gauges of a store. */
export interface StoreStats {
  bytes: number;
  bytesMax: number;
  liveBytes: number;
  blocks: number;
  segments: number;
  hits: number;
  misses: number;
  evictions: number;
  corruptions: number;
  /**
   * Failed write-side calls on the store's files: each entry reported KV_IO, each failed
   * checkpoint, segment sync outside a batch, directory sync, and the LOCK pid note at open.
   */
  writeErrors: number;
  /** writeErrors by errno: ENOSPC, EIO, and any other (EDQUOT, EROFS, ...). The three sum to writeErrors. */
  writeErrorsEnospc: number;
  writeErrorsEio: number;
  writeErrorsOther: number;
  readErrors: number;
  capacityRejects: number;
  pinnedBlocks: number;
  pinnedBytes: number;
  compactions: number;
  relocatedBytes: number;
  checkpoints: number;
  replayedRecords: number;
  /** Damaged records recovery found and skipped (their blocks are absent), plus index entries past a segment's end. */
  badRecords: number;
  /** Bytes recovery passed over to reach the next verifiable record (damage inside a segment). */
  skippedBytes: number;
  /** Bytes cut from the end of the newest segment by recovery (a torn append). */
  truncatedBytes: number;
  /** Opens that rebuilt the index from the segments because INDEX was missing or failed a check. */
  indexRebuilds: number;
  /** Segment files with a damaged header in the directory, renamed aside (never deleted). */
  quarantinedSegments: number;
  /** Their names, e.g. "seg-00000003.kvs.quarantined"; they count against bytesMax until removed. */
  quarantinedFiles: string[];
  /** What the last open found and did that an operator should know about, one line each, for the log. */
  openWarnings: string[];
  queueDepth: number;
  blocksWritten: number;
  openMs: number;
}

/** The SSD tier's contract; every implementation runs the same compliance suite. */
export interface BlockStore {
  /** Writes blocks as one group commit; results are in entry order. */
  put(entries: readonly PutEntry[]): Promise<PutResult[]>;
  /** Reads many blocks in parallel; every payload returned has passed its checksum. */
  getMany(keys: readonly Buffer[]): Promise<GetResult[]>;
  /**
   * getMany into memory the caller owns and reuses, so a read allocates no new external memory:
   * each payload is a view (subarray) of `arena`, in key order and 16-byte aligned, or, once the
   * arena has no room left for it, a Buffer of its own as getMany returns. Results are otherwise
   * getMany's. SsdBlockStore.arenaBytes gives the size that holds given payloads.
   *
   * The views alias the arena: do not read into it again, or write to it, until done with the
   * views of the previous read. Concurrent calls need arenas that do not overlap (an overlap
   * throws RangeError). Bytes of the arena outside the returned views are unspecified.
   */
  getManyInto(keys: readonly Buffer[], arena: Buffer): Promise<GetResult[]>;
  /** Whether the key is indexed; does not count as an access. */
  has(key: Buffer): boolean;
  /** Removes a block durably (a tombstone under the fsync policy). */
  delete(key: Buffer): Promise<DeleteResult>;
  /** Protects a block from eviction. */
  pin(key: Buffer, kind: PinKind): PinResult;
  /** Removes hard and soft pins; false when the key is not indexed. */
  unpin(key: Buffer): boolean;
  stats(): StoreStats;
  /** Keys indexed when iteration starts, least recently used first. */
  keys(): AsyncIterableIterator<Buffer>;
  /** Waits for pending work, writes a final checkpoint and releases the directory. */
  close(): Promise<void>;
}
