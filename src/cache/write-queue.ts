import { setTimeout as sleep } from "node:timers/promises";
import type { AdmissionPolicy } from "./config";

/** Whether an admission policy lets a block seen `sightings` times (and maybe pinned) into a tier. */
export function admits(policy: AdmissionPolicy, sightings: number, pinned: boolean): boolean {
  switch (policy) {
    case "all":
      return true;
    case "reused":
      return sightings >= 2 || pinned;
    case "pinned":
      return pinned;
  }
}

/** While a request waits for its first token, a pump's turns of backlog come this far apart at least. */
export const BACKLOG_SPACING_MS = 250;
// How often a pump standing aside looks again.
const BACKLOG_POLL_MS = 10;

/**
 * The bounded write queue in front of the SSD and shared tiers: at most `blocksMax` items and
 * `bytesMax` bytes. A write that finds it full is refused, never waited for; the tier counts it.
 * Its pump drains it between the engine's steps, a turn at a time (`turnBytes`).
 */
export class WriteQueue<T extends { bytes: number; keepPace?: boolean }> {
  private readonly items: T[] = [];
  private queuedBytes = 0;
  /** Bytes of keepPace items queued since the last turn began. */
  private arrivedBytes = 0;
  private lastBacklogTurnMs = -Infinity;
  private flushes = 0;
  /** Whether a request waits for its first token (set by the engine; see standAside). */
  urgent: () => boolean = () => false;

  constructor(
    private readonly blocksMax: number,
    private readonly bytesMax: number,
  ) {}

  get length(): number {
    return this.items.length;
  }

  get bytes(): number {
    return this.queuedBytes;
  }

  /** Whether a write of `bytes` would find room now. */
  hasRoom(bytes: number): boolean {
    return this.items.length < this.blocksMax && this.queuedBytes + bytes <= this.bytesMax;
  }

  /** Queues an item; false when it finds no room. */
  push(item: T): boolean {
    if (!this.hasRoom(item.bytes)) return false;
    this.items.push(item);
    this.queuedBytes += item.bytes;
    if (item.keepPace) this.arrivedBytes += item.bytes;
    return true;
  }

  /**
   * Waits, before a pump's turn, while `urgent` says a request is waiting for its first token and
   * nothing queued has to keep pace with the engine's steps: a backlog (a finished request's blocks)
   * then goes one batch per BACKLOG_SPACING_MS at most, so that such a request's steps do not wait
   * for its encoding, and the backlog is still written while requests keep coming. Never while
   * someone waits for the queue to drain (flushing).
   */
  async standAside(): Promise<void> {
    while (
      this.arrivedBytes === 0 &&
      this.flushes === 0 &&
      this.urgent() &&
      performance.now() - this.lastBacklogTurnMs < BACKLOG_SPACING_MS
    ) {
      await sleep(BACKLOG_POLL_MS);
    }
    this.lastBacklogTurnMs = performance.now();
  }

  /** Runs `drain` (a tier's flush: Evict, Clear, close wait for it) with the pump not standing aside. */
  async flushing(drain: () => Promise<void>): Promise<void> {
    this.flushes++;
    try {
      await drain();
    } finally {
      this.flushes--;
    }
  }

  /**
   * Begins a pump's turn: the bytes of keepPace items queued since the previous turn began, which
   * the turn writes at least (and at least one batch), so that the queue drains as fast as engine
   * steps fill it however many batches a step queues (a hybrid model's 256-token prefill chunk
   * queues four blocks with 21 MB snapshots). Other items (a finished request's blocks, which come
   * all at once: 201 MB at 8k tokens of qwen2.5-0.5b) drain a batch per turn, so the engine's next
   * step never waits for more than one batch of them.
   */
  turnBytes(): number {
    const arrived = this.arrivedBytes;
    this.arrivedBytes = 0;
    return arrived;
  }

  /** Takes the oldest items up to `maxBytes` (at least one). */
  takeBatch(maxBytes: number): T[] {
    const batch: T[] = [];
    let bytes = 0;
    while (this.items.length > 0 && (batch.length === 0 || bytes + this.items[0].bytes <= maxBytes)) {
      const item = this.items.shift()!;
      this.queuedBytes -= item.bytes;
      bytes += item.bytes;
      batch.push(item);
    }
    return batch;
  }

  /** Takes everything. */
  drain(): T[] {
    this.queuedBytes = 0;
    return this.items.splice(0);
  }
}
