import type { PrefixCache } from "../cache/index.js";
import { allocatorPurge } from "../store/native.js";

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

  constructor(
    private readonly cache: PrefixCache | undefined,
    private readonly idlePurgeMs: number,
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

  /** Collects when enough was dropped, or always with `force`. */
  step(force = false): void {
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
        if (isIdle()) allocatorPurge();
      });
    }, this.idlePurgeMs);
    this.purgeTimer.unref();
  }
}
