import type { PrefixCache } from "../cache/index.js";
import { allocatorPurge, allocatorStats, type AllocatorStats } from "../store/native.js";

/** Bytes of MLX temporaries the engine lets pile up before it collects (see Collector.step). */
const GARBAGE_BYTES_MAX = 256 * 1024 * 1024;

/**
 * When the engine's dropped MLX memory is reclaimed. MLX frees an array's memory only when its JS
 * wrapper is garbage-collected, and V8 does not see that memory, so the engine collects
 * explicitly: after every prefill chunk, every few decode steps and every finished request once
 * the bytes dropped pass GARBAGE_BYTES_MAX, counting together the temporaries and sequences the
 * engine estimates it has dropped and the blocks the cache dropped (PrefixCache.takeDroppedBytes;
 * with a threshold each, the two could hold twice as much between them); before admitting a job
 * whose memory the garbage would take; and once idle for `idlePurgeMs`, after which the pages the
 * allocator kept go back to the kernel.
 *
 * A collection takes 20-35 ms with the RAM tier full of arrays, and one run as a request finishes
 * delays a request that arrives right then. Leaving it for an idle moment cost more: the next
 * restore wrote into fresh pages instead of the ones just freed. Measured, ten 8k RAM hits each
 * after a short request: median TTFT 248 ms collecting as requests finish, 427 ms collecting after
 * 100 ms idle, 404 ms with a young-generation collection (about 1 ms, which does not reach a
 * finished sequence's arrays) as requests finish. Collecting at once whenever a request finished
 * with nothing else running (from 32 MiB dropped) made the next RAM hit's import a little faster
 * but put the collection into its queue time: median server TTFT of six 8k RAM hits, each after a
 * short request, 277 ms against 254.
 */
export class Collector {
  private garbage = 0;
  private purgeTimer: NodeJS.Timeout | undefined;
  private purges = 0;
  /** The most bytes in use the allocator had since the last purge (see trim). */
  private activePeak = 0;

  /**
   * `keptBytesMax` bounds the freed pages the allocator keeps beyond the engine's peak use while
   * requests come (see trim);
   * `allocator` reads and purges the process's malloc (the native addon's, replaced in tests).
   */
  constructor(
    private readonly cache: PrefixCache | undefined,
    private readonly idlePurgeMs: number,
    private readonly keptBytesMax = Infinity,
    private readonly allocator: { stats(): AllocatorStats; purge(): boolean } = {
      stats: allocatorStats,
      purge: allocatorPurge,
    },
  ) {}

  /** Estimated bytes of MLX memory dropped since the last collection, the cache's included. */
  get pending(): number {
    this.garbage += this.cache?.takeDroppedBytes() ?? 0;
    return this.garbage;
  }

  /** Counts bytes of MLX memory the engine dropped. */
  dropped(bytes: number): void {
    this.garbage += bytes;
  }

  /**
   * After an engine step (or with `force`): samples what is in use, the step's garbage still
   * included (see trim), and collects when enough was dropped, or always with `force`.
   */
  step(force = false): void {
    this.sample();
    if (force || this.pending >= GARBAGE_BYTES_MAX) {
      this.garbage = 0;
      global.gc?.();
    }
  }

  /** Work arrived: the idle purge waits for the next idle time. */
  busy(): void {
    clearTimeout(this.purgeTimer);
  }

  /**
   * The engine has no work: once idle for `idlePurgeMs`, collects and, after the finalizers ran,
   * hands the pages the allocator kept back to the kernel.
   */
  idle(isIdle: () => boolean): void {
    this.busy();
    this.purgeTimer = setTimeout(() => {
      if (!isIdle()) return;
      this.step(true);
      setImmediate(() => {
        if (isIdle() && this.allocator.purge()) this.purged();
      });
    }, this.idlePurgeMs);
    this.purgeTimer.unref();
  }

  /**
   * Hands the allocator's kept pages back to the kernel when its resident size passes the most the
   * engine had in use since the last purge (sampled at every step) by more than `keptBytesMax`, or
   * passes `limitBytes` (the engine's memory bound); returns the allocator's state. Under a load that
   * never lets the engine idle, jemalloc (with decay off, see allocator.ts) reuses most freed pages
   * but not all, and the rest stays resident until the engine idles. Measured on the small model,
   * two 600-token requests at a time, cache off: resident grew about 9 MB a round for 60 rounds (402
   * to 935 MB) while what was in use never passed 450 MB. Pages kept within the engine's peak use
   * are the ones its next request reuses: 8k-token RAM hits on qwen2.5-0.5b keep 60-600 MB between
   * requests, and purging them made the next hit's TTFT 100-150 ms longer. Called about once a second.
   */
  trim(limitBytes = Infinity): AllocatorState {
    let stats = this.sample();
    const kept = () => Math.max(0, stats.residentBytes - stats.activeBytes);
    const over =
      stats.residentBytes - this.activePeak > this.keptBytesMax ||
      (stats.residentBytes > limitBytes && kept() > 0);
    if (stats.name === "jemalloc" && over && this.allocator.purge()) {
      this.purged();
      stats = this.sample();
    }
    return { activeBytes: stats.activeBytes, keptBytes: kept(), purges: this.purges };
  }

  /** Reads the allocator and keeps the most it had in use since the last purge. */
  private sample(): AllocatorStats {
    const stats = this.allocator.stats();
    this.activePeak = Math.max(this.activePeak, stats.activeBytes);
    return stats;
  }

  /** A purge happened: the peak starts again from what is in use now. */
  private purged(): void {
    this.purges++;
    this.activePeak = 0;
  }
}

/** The engine's allocator as the engine reports it (jemalloc; zeros with the system's malloc). */
export interface AllocatorState {
  /** Bytes in pages that hold live allocations. */
  activeBytes: number;
  /** Freed pages the allocator keeps resident for reuse (with its metadata). */
  keptBytes: number;
  /** Times the engine handed the kept pages back to the kernel: idle, or over the bound. */
  purges: number;
}
