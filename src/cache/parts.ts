import type { ModelShape } from "./block-codec";
import type { BlockIndex } from "./block-index";
import type { CacheOptions } from "./config";
import type { BlockPayloads } from "./payloads";
import type { Pins } from "./pins";
import type { RamTier } from "./ram-tier";
import type { SharedTier } from "./shared-tier";
import type { SsdTier } from "./ssd-tier";
import type { Staging } from "./staging";

/** What the parts of the cache work on, built once by PrefixCache.open. */
export interface CacheParts {
  readonly model: ModelShape;
  readonly options: CacheOptions;
  readonly index: BlockIndex;
  readonly pins: Pins;
  readonly ram: RamTier;
  readonly ssd: SsdTier | null;
  readonly shared: SharedTier | null;
  readonly staging: Staging;
  readonly payloads: BlockPayloads;
  /** Unix milliseconds (Date.now unless a test sets the clock). */
  readonly nowMs: () => number;
  /** Where the cache reports what an operator should know (a restore that failed on /dev/shm). */
  readonly log: (line: string) => void;
}

/**
 * Base of restore, persist and transfer: the parts they share, under the names their code uses.
 * They share the index and the tiers, never each other.
 */
export abstract class CachePart {
  protected readonly model: ModelShape;
  protected readonly options: CacheOptions;
  protected readonly index: BlockIndex;
  protected readonly pins: Pins;
  protected readonly ram: RamTier;
  protected readonly ssd: SsdTier | null;
  protected readonly shared: SharedTier | null;
  protected readonly staging: Staging;
  protected readonly payloads: BlockPayloads;
  protected readonly nowMs: () => number;
  protected readonly log: (line: string) => void;
  /** MLX bytes the part dropped (temporaries, exports the RAM tier refused), for PrefixCache.takeDroppedBytes. */
  protected droppedBytes = 0;

  constructor(parts: CacheParts) {
    this.model = parts.model;
    this.options = parts.options;
    this.index = parts.index;
    this.pins = parts.pins;
    this.ram = parts.ram;
    this.ssd = parts.ssd;
    this.shared = parts.shared;
    this.staging = parts.staging;
    this.payloads = parts.payloads;
    this.nowMs = parts.nowMs;
    this.log = parts.log;
  }

  /** MLX bytes dropped since the previous call. */
  takeDroppedBytes(): number {
    const bytes = this.droppedBytes;
    this.droppedBytes = 0;
    return bytes;
  }
}
