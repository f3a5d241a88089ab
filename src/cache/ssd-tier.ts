import * as fs from "node:fs";
import * as path from "node:path";
import { setImmediate as nextTurn } from "node:timers/promises";
import {
  openStore,
  type BlockStore,
  type GetResult,
  type PinKind,
  type PinResult,
  type PutResult,
  type StoreStats,
} from "../store";
import type { LayerKV } from "../model/kv-cache";
import { openEnvelope } from "./block-codec";
import { ChainLog, type ChainRecord } from "./chain-log";
import type { AdmissionPolicy } from "./config";
import { parseSafetensors } from "../util/safetensors";

/** A block waiting for its SSD write. */
export interface PendingWrite {
  keyHex: string;
  record: ChainRecord;
  /** Stored bytes (envelope and payload), counted against the queue's byte limit. */
  bytes: number;
  /** The KV to encode on the engine's thread, or the stored bytes when they are already at hand. */
  source: { layers: LayerKV[] } | { stored: Buffer };
  /** Told the outcome once the store answered. */
  done?: (result: PutResult) => void;
}

/** Encodes a batch of pending writes into stored blocks, in order (MLX work, engine thread). */
export type EncodeBatch = (items: readonly PendingWrite[]) => Buffer[];

/** Options of the SSD tier. */
export interface SsdTierOptions {
  dir: string;
  bytesMax: number;
  segmentBytes: number;
  fsync: "batch" | "none";
  admission: AdmissionPolicy;
  writeQueueBlocksMax: number;
  writeQueueBytesMax: number;
  writeBatchBytesMax: number;
}

/** Gauges and counters of the SSD tier. */
export interface SsdTierStats {
  store: StoreStats;
  queueBlocks: number;
  queueBytes: number;
  /** Blocks not written because the queue was full. */
  writeSkips: number;
  /** Blocks the store refused or failed to write. */
  writeErrors: number;
  blocksWritten: number;
  /** Message of the last failed encode, for the log. */
  lastWriteError: string;
  /** Where the chain index came from at open: the log, or a scan of the store. */
  indexSource: "log" | "scan" | "empty";
  /** Blocks dropped at open because the store held them but they could not be read. */
  scanDropped: number;
}

// Blocks read per getMany while rebuilding the index from the store.
const SCAN_BATCH_BLOCKS = 64;

/**
 * The SSD tier: the native block store plus the chain index log, with a bounded write queue in
 * front. Writes go behind the request: persist() only enqueues, and a background pump encodes a
 * batch (up to writeBatchBytesMax, so the engine's thread pauses briefly), appends its chain
 * records, and hands it to the store as one group commit. A full queue never blocks and never
 * drops silently: the block is skipped and writeSkips counts it.
 */
export class SsdTier {
  /** Blocks written and not known to be gone, by hex key. The store may have evicted some since. */
  readonly records = new Map<string, ChainRecord>();
  private readonly queue: PendingWrite[] = [];
  private queueBytes = 0;
  private pumping: Promise<void> | null = null;
  private writeSkips = 0;
  private writeErrors = 0;
  private blocksWritten = 0;
  private scanDropped = 0;
  private lastWriteError = "";
  private indexSource: SsdTierStats["indexSource"] = "empty";
  private closed = false;

  private constructor(
    private readonly store: BlockStore,
    private log: ChainLog,
    private readonly options: SsdTierOptions,
    private readonly encode: EncodeBatch,
  ) {}

  /**
   * Opens the store under `<dir>/blocks` and the chain log `<dir>/chain.log`. Records the log
   * names but the store no longer holds are dropped and the log is compacted; a missing or
   * unreadable log is rebuilt by reading every stored block's envelope and metadata.
   */
  static async open(options: SsdTierOptions, encode: EncodeBatch): Promise<SsdTier> {
    fs.mkdirSync(options.dir, { recursive: true });
    const store = await openStore(path.join(options.dir, "blocks"), {
      bytesMax: options.bytesMax,
      fsync: options.fsync,
      segmentBytes: options.segmentBytes,
    });
    const logFile = path.join(options.dir, "chain.log");
    let records = ChainLog.read(logFile);
    let source: SsdTierStats["indexSource"] = "log";
    let scanDropped = 0;
    if (records === null) {
      const scan = await scanStore(store);
      records = scan.records;
      scanDropped = scan.dropped;
      source = records.length > 0 ? "scan" : "empty";
    }
    const live = records.filter((r) => store.has(r.key));
    let log: ChainLog;
    try {
      log = ChainLog.rewrite(logFile, live);
    } catch (err) {
      await store.close();
      throw err;
    }
    const tier = new SsdTier(store, log, options, encode);
    for (const r of live) tier.records.set(r.key.toString("hex"), r);
    tier.indexSource = source;
    tier.scanDropped = scanDropped;
    return tier;
  }

  /** Whether the store holds the block (no I/O, not an access). */
  has(key: Buffer): boolean {
    return !this.closed && this.store.has(key);
  }

  /** Whether the admission policy lets a block with this history onto SSD. */
  admits(sightings: number, pinned: boolean): boolean {
    switch (this.options.admission) {
      case "all":
        return true;
      case "reused":
        return sightings >= 2 || pinned;
      case "pinned":
        return pinned;
    }
  }

  /** Whether a write of `bytes` would find room in the queue now. */
  hasRoom(bytes: number): boolean {
    return (
      !this.closed &&
      this.queue.length < this.options.writeQueueBlocksMax &&
      this.queueBytes + bytes <= this.options.writeQueueBytesMax
    );
  }

  /** Queues a write; false (and counted) when the queue is full. */
  enqueue(item: PendingWrite): boolean {
    if (!this.hasRoom(item.bytes)) {
      this.writeSkips++;
      return false;
    }
    this.queue.push(item);
    this.queueBytes += item.bytes;
    this.pumping ??= this.pump();
    return true;
  }

  /** Resolves when every queued write has been answered by the store. */
  async flush(): Promise<void> {
    while (this.pumping) await this.pumping;
  }

  /** Reads blocks in parallel; each result passed the store's checksum or names why not. */
  getMany(keys: readonly Buffer[]): Promise<GetResult[]> {
    return this.store.getMany(keys);
  }

  /** Removes a block (e.g. one that failed verification). */
  async delete(key: Buffer): Promise<void> {
    this.records.delete(key.toString("hex"));
    if (this.store.has(key)) await this.store.delete(key);
  }

  /** Forgets a block the store no longer has (evicted by its cap). */
  forget(keyHex: string): void {
    this.records.delete(keyHex);
  }

  pin(key: Buffer, kind: PinKind): PinResult {
    return this.store.pin(key, kind);
  }

  unpin(key: Buffer): boolean {
    return this.store.unpin(key);
  }

  stats(): SsdTierStats {
    return {
      store: this.store.stats(),
      queueBlocks: this.queue.length,
      queueBytes: this.queueBytes,
      writeSkips: this.writeSkips,
      writeErrors: this.writeErrors,
      blocksWritten: this.blocksWritten,
      lastWriteError: this.lastWriteError,
      indexSource: this.indexSource,
      scanDropped: this.scanDropped,
    };
  }

  /** Writes what is queued, then closes the log and the store. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    this.log.close();
    await this.store.close();
  }

  private async pump(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        // Let the request that queued these blocks finish its step first.
        await nextTurn();
        const batch = this.takeBatch();
        // Encoding stages bytes on a tmpfs and writing may hit a full or failing disk: operating
        // errors, counted and reported to each block's owner, never thrown from the background.
        try {
          await this.writeBatch(batch);
        } catch (err) {
          this.lastWriteError = (err as Error).message;
          this.fail(batch, "KV_IO");
          continue;
        }
        try {
          this.compactIfNeeded();
        } catch (err) {
          // The old log stays valid (the rewrite is atomic); compaction is retried later.
          this.lastWriteError = (err as Error).message;
        }
      }
    } finally {
      this.pumping = null;
    }
  }

  private async writeBatch(batch: PendingWrite[]): Promise<void> {
    const stored = this.encode(batch);
    const records = batch.map((item, i) => ({ ...item.record, storedBytes: stored[i].length }));
    this.log.append(records);
    const [results] = await Promise.all([
      this.store.put(batch.map((item, i) => ({ key: item.record.key, payload: stored[i] }))),
      this.options.fsync === "batch" ? this.log.sync() : Promise.resolve(),
    ]);
    batch.forEach((item, i) => {
      const result = results[i];
      if (result === "persisted") {
        this.records.set(item.keyHex, records[i]);
        this.blocksWritten++;
      } else {
        this.writeErrors++;
      }
      item.done?.(result);
    });
  }

  private takeBatch(): PendingWrite[] {
    const batch: PendingWrite[] = [];
    let bytes = 0;
    while (this.queue.length > 0) {
      const next = this.queue[0];
      if (batch.length > 0 && bytes + next.bytes > this.options.writeBatchBytesMax) break;
      batch.push(this.queue.shift()!);
      bytes += next.bytes;
      this.queueBytes -= next.bytes;
    }
    return batch;
  }

  private fail(batch: readonly PendingWrite[], code: PutResult): void {
    for (const item of batch) {
      this.writeErrors++;
      item.done?.(code);
    }
  }

  // The log only grows; rewrite it from the live records once dead ones outnumber them.
  private compactIfNeeded(): void {
    if (this.log.recordCount <= 2 * this.records.size + 1024) return;
    for (const [keyHex, r] of this.records) if (!this.store.has(r.key)) this.records.delete(keyHex);
    const fresh = ChainLog.rewrite(this.log.file, this.records.values());
    this.log.close();
    this.log = fresh;
  }
}

/** Rebuilds chain records from the stored blocks themselves; unreadable blocks are deleted. */
async function scanStore(store: BlockStore): Promise<{ records: ChainRecord[]; dropped: number }> {
  const keys: Buffer[] = [];
  for await (const key of store.keys()) keys.push(key);
  const records: ChainRecord[] = [];
  let dropped = 0;
  for (let i = 0; i < keys.length; i += SCAN_BATCH_BLOCKS) {
    const batch = keys.slice(i, i + SCAN_BATCH_BLOCKS);
    const results = await store.getMany(batch);
    for (let j = 0; j < batch.length; j++) {
      const result = results[j];
      const record = typeof result === "string" ? null : recordFromStored(batch[j], result);
      if (record) {
        records.push(record);
      } else {
        dropped++;
        await store.delete(batch[j]);
      }
    }
  }
  return { records, dropped };
}

function recordFromStored(key: Buffer, stored: Buffer): ChainRecord | null {
  try {
    const { root, payload } = openEnvelope(stored);
    const meta = parseSafetensors(payload).metadata;
    if (meta.key !== key.toString("hex")) return null;
    const tokenIds = JSON.parse(meta.token_ids) as number[];
    if (!Array.isArray(tokenIds) || tokenIds.length === 0) return null;
    const parent = meta.parent_key === "" ? Buffer.from(root) : Buffer.from(meta.parent_key, "hex");
    if (parent.length !== 32) return null;
    return {
      key,
      parent,
      root: Buffer.from(root),
      tokenIds: Uint32Array.from(tokenIds),
      storedBytes: stored.length,
    };
  } catch {
    return null;
  }
}
