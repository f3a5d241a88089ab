import type { CacheOptions } from "./config";
import type { CacheStats, MatchTier } from "./reports";

// Exponential moving average weight of a new rate measurement.
const RATE_EWMA_WEIGHT = 0.3;
// RAM restore runs at memory speed (measured ~1.2 GB/s for concatenate + import, README); the
// prior only matters until the first RAM restore is measured.
const RAM_RESTORE_BYTES_PER_SECOND_PRIOR = 1e9;

/**
 * The cost model's rates: how fast each tier restores and the engine prefills, starting from the
 * configured priors and following what restores and prefills measure (an exponential moving
 * average), so a restore can be weighed against recomputing its tokens.
 */
export class RestoreCosts {
  private readonly bytesPerMs: Record<MatchTier, number>;
  private prefillTokensPerMs: number;

  constructor(
    options: Pick<
      CacheOptions,
      "ssdRestoreBytesPerSecondPrior" | "sharedRestoreBytesPerSecondPrior" | "prefillTokensPerSecondPrior"
    >,
  ) {
    this.bytesPerMs = {
      ram: RAM_RESTORE_BYTES_PER_SECOND_PRIOR / 1000,
      ssd: options.ssdRestoreBytesPerSecondPrior / 1000,
      shared: options.sharedRestoreBytesPerSecondPrior / 1000,
    };
    this.prefillTokensPerMs = options.prefillTokensPerSecondPrior / 1000;
  }

  /** A restore from `tier` moved `bytes` in `ms`. */
  observeRestore(tier: MatchTier, bytes: number, ms: number): void {
    this.bytesPerMs[tier] = ewma(this.bytesPerMs[tier], bytes / Math.max(ms, 0.01));
  }

  /** A prefill computed `tokens` in `ms`. */
  observePrefill(tokens: number, ms: number): void {
    if (tokens <= 0 || ms <= 0) return;
    this.prefillTokensPerMs = ewma(this.prefillTokensPerMs, tokens / ms);
  }

  /** Estimated milliseconds to restore `bytes` from each tier. */
  restoreMs(bytes: Record<MatchTier, number>): number {
    return (
      bytes.ssd / this.bytesPerMs.ssd +
      bytes.ram / this.bytesPerMs.ram +
      bytes.shared / this.bytesPerMs.shared
    );
  }

  /** Estimated milliseconds to prefill `tokens`. */
  recomputeMs(tokens: number): number {
    return tokens / this.prefillTokensPerMs;
  }

  /** The rates, per second. */
  rates(): CacheStats["rates"] {
    return {
      sharedRestoreBytesPerSecond: this.bytesPerMs.shared * 1000,
      ssdRestoreBytesPerSecond: this.bytesPerMs.ssd * 1000,
      ramRestoreBytesPerSecond: this.bytesPerMs.ram * 1000,
      prefillTokensPerSecond: this.prefillTokensPerMs * 1000,
    };
  }
}

function ewma(previous: number, sample: number): number {
  return previous * (1 - RATE_EWMA_WEIGHT) + sample * RATE_EWMA_WEIGHT;
}
