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
import type { LayerBlock } from "../model/kv-cache";
import { ChainLog, type ChainRecord } from "./chain-log";
import type { AdmissionPolicy } from "./config";
import type { FileIo } from "./file-io";
import { PinJournal, pinsAt, type PinRecord } from "./pin-log";
import { openIndex, type IndexOpenReport } from "./ssd-open";
import { WriteErrors, type WriteErrorCounts } from "./write-errors";
import { WriteQueue, admits } from "./write-queue";

/** A block waiting for its SSD write. */
export interface PendingWrite {
  keyHex: string;
  record: ChainRecord;
  /** Stored bytes (envelope and payload), counted against the queue's byte limit. */
  bytes: number;
  /** The KV to encode on the engine's thread, or the stored bytes when they are already at hand. */
  source: { layers: LayerBlock[] } | { stored: Buffer };
  /** Written within the pump's next turn (see PersistOptions.keepPace and WriteQueue.turnBytes). */
  keepPace?: boolean;
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
  /** The served model's fingerprint: records found after damage in the chain log are checked with it. */
  fingerprint: string;
  /** The KV layout version of the served model's keys (block-key.ts); default KV_LAYOUT_VERSION. */
  layoutVersion?: number;
}

/** What the SSD tier's side files are written with, what it logs with and its clock; tests swap them. */
export interface SsdTierSeams {
  io: FileIo;
  log: (line: string) => void;
  nowMs: () => number;
}

/** Gauges and counters of the SSD tier. */
export interface SsdTierStats {
  store: StoreStats;
  queueBlocks: number;
  queueBytes: number;
  /** Blocks not written because the queue was full. */
  writeSkips: number;
  /**
   * Failed writes: blocks the store refused or failed to write (or that could not be encoded), and
   * failed writes of chain.log and pins.log (each append, sync or rewrite). The sum of byCause.
   */
  writeErrors: number;
  writeErrorsByCause: WriteErrorCounts;
  blocksWritten: number;
  /** Message of the last failed encode, for the log. */
  lastWriteError: string;
  /** What the open found: where the chain index came from, what was read back or dropped. */
  index: IndexOpenReport;
}

// A chain log that could not be written is retried at most this often.
const LOG_RETRY_MS = 60_000;

/**
 * The SSD tier: the native block store, the chain log (a cache of the store's records, for a fast
 * open) and the pin journal, with a bounded write queue in front. Writes go behind the request:
 * persist() only enqueues, and a background pump encodes a batch (up to writeBatchBytesMax, so
 * the engine's thread pauses briefly), appends its chain records, and hands it to the store as one
 * group commit. A full queue never blocks and never drops silently: the block is skipped and
 * writeSkips counts it. A failed write of the chain log costs no block: the block is stored all
 * the same, and the next open reads it back from the store if the log still lacks it.
 */
export class SsdTier {
  /** Blocks written and not known to be gone, by hex key. The store may have evicted some since. */
  readonly records = new Map<string, ChainRecord>();
  private readonly queue: WriteQueue<PendingWrite>;
  private pumping: Promise<void> | null = null;
  private writeSkips = 0;
  private blocksWritten = 0;
  private lastWriteError = "";
  private logRetryAtMs = 0;
  private closed = false;

  private constructor(
    private readonly store: BlockStore,
    private log: ChainLog | null,
    private readonly pinJournal: PinJournal,
    /** Live pins the pin journal held at open, for the cache's pins to learn. */
    readonly openPins: readonly PinRecord[],
    private readonly index: IndexOpenReport,
    private readonly errors: WriteErrors,
    private readonly options: SsdTierOptions,
    private readonly seams: SsdTierSeams,
    private readonly encode: EncodeBatch,
  ) {
    this.queue = new WriteQueue(options.writeQueueBlocksMax, options.writeQueueBytesMax);
  }

  /**
   * Opens the store under `<dir>/blocks`, indexes what it holds with the chain log `<dir>/chain.log`
   * as a cache (ssd-open.ts), and reads the pin journal `<dir>/pins.log`, handing the store again
   * the pins it may have lost (a kill -9 since its last checkpoint) and taking back those unpinned.
   */
  static async open(options: SsdTierOptions, encode: EncodeBatch, seams: SsdTierSeams): Promise<SsdTier> {
    fs.mkdirSync(options.dir, { recursive: true });
    const store = await openStore(path.join(options.dir, "blocks"), {
      bytesMax: options.bytesMax,
      fsync: options.fsync,
      segmentBytes: options.segmentBytes,
    });
    // What the store found at open and set aside (a quarantined segment, a rebuilt index) is logged.
    for (const warning of store.stats().openWarnings) seams.log(`SSD store: ${warning}`);
    const errors = new WriteErrors(seams.log, seams.nowMs);
    let tier: SsdTier;
    let opened: Awaited<ReturnType<typeof openIndex>> | undefined;
    try {
      opened = await openIndex(
        store,
        path.join(options.dir, "chain.log"),
        options.fingerprint,
        options.layoutVersion,
        seams.io,
        errors,
      );
      const { journal, records: pins } = PinJournal.open(
        path.join(options.dir, "pins.log"),
        (key) => store.has(key),
        {
          io: seams.io,
          errors,
          nowMs: seams.nowMs,
          durable: options.fsync === "batch",
        },
      );
      const now = seams.nowMs();
      for (const pin of pins) {
        if (pin.hard) store.pin(pin.key, "hard");
        else if (pin.softUntilMs > now) store.pin(pin.key, { ttlMs: Math.ceil(pin.softUntilMs - now) });
        else store.unpin(pin.key);
      }
      const live = pins.filter((pin) => pinsAt(pin, now));
      tier = new SsdTier(store, opened.log, journal, live, opened.report, errors, options, seams, encode);
      for (const r of opened.records) tier.records.set(r.key.toString("hex"), r);
    } catch (err) {
      opened?.log?.close();
      await store.close();
      throw err;
    }
    return tier;
  }

  /** Whether the store holds the block (no I/O, not an access). */
  has(key: Buffer): boolean {
    return !this.closed && this.store.has(key);
  }

  /** Whether the admission policy lets a block with this history onto SSD. */
  admits(sightings: number, pinned: boolean): boolean {
    return admits(this.options.admission, sightings, pinned);
  }

  /** Whether a write of `bytes` would find room in the queue now. */
  hasRoom(bytes: number): boolean {
    return !this.closed && this.queue.hasRoom(bytes);
  }

  /** Queues a write; false (and counted) when the queue is full. */
  enqueue(item: PendingWrite): boolean {
    if (this.closed || !this.queue.push(item)) {
      this.writeSkips++;
      return false;
    }
    this.pumping ??= this.pump();
    return true;
  }

  /** Tells the pump when a request waits for its first token (WriteQueue.standAside). */
  deferWritesWhile(urgent: () => boolean): void {
    this.queue.urgent = urgent;
  }

  /** Resolves when every queued write has been answered by the store. */
  async flush(): Promise<void> {
    await this.queue.flushing(async () => {
      while (this.pumping) await this.pumping;
    });
  }

  /** Reads blocks in parallel; each result passed the store's checksum or names why not. */
  getMany(keys: readonly Buffer[]): Promise<GetResult[]> {
    return this.store.getMany(keys);
  }

  /** getMany into the caller's reused `arena`; BlockStore.getManyInto says how long its views stay valid. */
  getManyInto(keys: readonly Buffer[], arena: Buffer): Promise<GetResult[]> {
    return this.store.getManyInto(keys, arena);
  }

  /** Removes a block (e.g. one that failed verification). */
  async delete(key: Buffer): Promise<void> {
    this.records.delete(key.toString("hex"));
    if (this.store.has(key)) await this.store.delete(key);
  }

  /** Bytes of a block the tier holds (envelope and payload); 0 when it holds none. */
  storedBytesOf(keyHex: string): number {
    const record = this.records.get(keyHex);
    return record && this.has(record.key) ? record.storedBytes : 0;
  }

  /** Every key the store holds, whether or not the tier indexed it. */
  storedKeys(): AsyncIterable<Buffer> {
    return this.store.keys();
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

  /** Records changes of blocks' pins in the pin journal, so that they survive a restart. */
  recordPins(changes: readonly PinRecord[]): void {
    if (!this.closed) this.pinJournal.record(changes);
  }

  /** The blocks of the chain with root `rootHex` the store holds. */
  storedOf(rootHex: string): ChainRecord[] {
    const out: ChainRecord[] = [];
    for (const r of this.records.values())
      if (r.root.toString("hex") === rootHex && this.has(r.key)) out.push(r);
    return out;
  }

  stats(): SsdTierStats {
    return {
      store: this.store.stats(),
      queueBlocks: this.queue.length,
      queueBytes: this.queue.bytes,
      writeSkips: this.writeSkips,
      writeErrors: this.errors.total,
      writeErrorsByCause: { ...this.errors.counts },
      blocksWritten: this.blocksWritten,
      lastWriteError: this.lastWriteError,
      index: { ...this.index },
    };
  }

  /** Writes what is queued, then closes the log, the store and the pin journal. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    // Records a failed append left unwritten get a last chance.
    this.appendToLog([]);
    await this.syncLog();
    this.log?.close();
    this.pinJournal.settle((key) => this.store.has(key));
    await this.store.close();
    this.pinJournal.close();
  }

  /**
   * Runs between the engine's steps (it shares their thread: encoding goes through MLX). Each turn
   * encodes one batch, or more when blocks queued to keep pace with the engine's steps ask for it
   * (at least as many of their bytes as were queued since the previous turn began: a hybrid model's
   * 256-token prefill chunk queues four blocks with 21 MB snapshots each), and hands them to the
   * store as one group commit. The store writes a turn while the next turn encodes, one write in
   * flight, in order. A finished request's blocks thus drain a batch per turn, and a request that
   * arrives meanwhile waits for one batch's encoding, not for the whole backlog (at 8k tokens about
   * 200 MB, a second). A disk slower than the requests fills the queue, whose skips count it.
   */
  private async pump(): Promise<void> {
    let writing: Promise<void> = Promise.resolve();
    try {
      for (;;) {
        if (this.queue.length === 0) {
          // Blocks queued while the last write ran are this pump's too.
          await writing;
          this.compactIfNeeded();
          if (this.queue.length === 0) return;
        }
        // Let the request that queued these blocks finish its step first, and one waiting for its
        // first token take its steps.
        await nextTurn();
        await this.queue.standAside();
        if (this.queue.length === 0) continue;
        let budget = this.queue.turnBytes();
        const items: PendingWrite[] = [];
        const stored: Buffer[] = [];
        do {
          // Encoding stages bytes on a tmpfs (one staging file per batch) and writing may hit a full
          // or failing disk: operating errors, counted and reported to each block's owner, never
          // thrown from the background.
          const batch = this.queue.takeBatch(this.options.writeBatchBytesMax);
          budget -= batch.reduce((n, item) => n + item.bytes, 0);
          try {
            stored.push(...this.encode(batch));
            items.push(...batch);
          } catch (err) {
            this.failBatch(batch, err);
          }
        } while (this.queue.length > 0 && budget > 0);
        await writing;
        this.compactIfNeeded();
        if (items.length > 0)
          writing = this.writeBatch(items, stored).catch((err) => this.failBatch(items, err));
      }
    } finally {
      this.pumping = null;
    }
  }

  private failBatch(batch: readonly PendingWrite[], err: unknown): void {
    this.lastWriteError = (err as Error).message;
    this.errors.addError(err, batch.length, "block batch");
    for (const item of batch) item.done?.("KV_IO");
  }

  private async writeBatch(batch: PendingWrite[], stored: Buffer[]): Promise<void> {
    const records = batch.map((item, i) => ({ ...item.record, storedBytes: stored[i].length }));
    this.appendToLog(records);
    const before = this.storeErrnoCounts();
    const [results] = await Promise.all([
      this.store.put(batch.map((item, i) => ({ key: item.record.key, payload: stored[i] }))),
      this.syncLog(),
    ]);
    const failed = results.filter((r) => r !== "persisted");
    if (failed.length > 0) {
      const after = this.storeErrnoCounts();
      const enospc = after[0] > before[0];
      const eio = after[1] > before[1];
      const cause = enospc && !eio ? "ENOSPC" : eio && !enospc ? "EIO" : "other";
      this.errors.add(
        cause,
        failed.length,
        "block store",
        `${failed.length} of ${batch.length} blocks: ${failed[0]}`,
      );
    }
    batch.forEach((item, i) => {
      if (results[i] === "persisted") {
        this.records.set(item.keyHex, records[i]);
        this.blocksWritten++;
      }
      item.done?.(results[i]);
    });
  }

  /**
   * Appends a batch's chain records. A failure (full disk, I/O error) is counted and logged and
   * costs no block: the log ends in whole records and retries the unwritten ones with the next
   * append; if it never gets them, the next open reads their blocks back from the store.
   */
  private appendToLog(records: readonly ChainRecord[]): void {
    try {
      if (this.log) {
        this.log.append(records);
      } else if (this.seams.nowMs() >= this.logRetryAtMs) {
        this.log = ChainLog.rewrite(this.chainLogFile, [...this.records.values(), ...records], this.seams.io);
      }
    } catch (err) {
      if (!this.log) this.logRetryAtMs = this.seams.nowMs() + LOG_RETRY_MS;
      this.errors.addError(err, 1, "chain.log append");
    }
  }

  private async syncLog(): Promise<void> {
    if (this.options.fsync !== "batch" || !this.log) return;
    try {
      await this.log.sync();
    } catch (err) {
      // What the sync lost, the next open reads back from the store.
      this.errors.addError(err, 1, "chain.log sync");
    }
  }

  private get chainLogFile(): string {
    return path.join(this.options.dir, "chain.log");
  }

  // The store counts its failed writes by errno (ENOSPC, EIO); their growth names a batch's cause.
  private storeErrnoCounts(): [number, number] {
    const s = this.store.stats();
    return [s.writeErrorsEnospc, s.writeErrorsEio];
  }

  // The log only grows; rewrite it from the live records once dead ones outnumber them.
  private compactIfNeeded(): void {
    if (!this.log || this.log.recordCount <= 2 * this.records.size + 1024) return;
    if (this.seams.nowMs() < this.logRetryAtMs) return;
    for (const [keyHex, r] of this.records) if (!this.store.has(r.key)) this.records.delete(keyHex);
    try {
      const fresh = ChainLog.rewrite(this.chainLogFile, this.records.values(), this.seams.io);
      this.log.close();
      this.log = fresh;
    } catch (err) {
      // The old log stays valid (the rewrite is atomic); compaction is retried later.
      this.logRetryAtMs = this.seams.nowMs() + LOG_RETRY_MS;
      this.errors.addError(err, 1, "chain.log rewrite");
    }
  }
}
