import { KvparkError } from "../errors";
import type { PinKind } from "../store";
import type { CacheOptions } from "./config";
import type { PinReport, PinRequestKind } from "./reports";
import type { SsdTier } from "./ssd-tier";

/** What pins need to know of a block: its key, its tenant's root, its size and its SSD state. */
export interface PinTarget {
  readonly key: Buffer;
  readonly keyHex: string;
  readonly rootHex: string;
  readonly bytes: number;
  readonly ssd: "none" | "queued" | "stored";
}

/** A block's pins: hard until unpinned, soft until an epoch time. */
interface PinState {
  hard: boolean;
  softUntilMs: number;
}

/**
 * Pins and quotas, the only place pin state is decided: which blocks are pinned, hard or soft and
 * until when, and how many hard-pinned bytes each tenant holds against hardPinQuotaBytes. The
 * tiers only receive the decision: the RAM tier asks isPinned() whenever it looks for blocks to
 * evict; the SSD store, whose eviction runs in native code, is told pinKind() when a pinned block
 * becomes stored (onStored()) and whenever a stored block's pins change. Pins live in memory.
 */
export class Pins {
  private readonly pins = new Map<string, PinState>();
  private readonly hardPinnedBytes = new Map<string, number>();

  constructor(
    private readonly options: Pick<CacheOptions, "hardPinQuotaBytes" | "softPinTtlMsDefault">,
    private readonly ssd: SsdTier | null,
    private readonly nowMs: () => number = Date.now,
  ) {}

  /** Whether a hard pin or an unexpired soft pin protects the block. */
  isPinned(keyHex: string): boolean {
    return this.pinKind(keyHex) !== null;
  }

  /** The block's pin as a tier takes it: "hard", a soft pin's remaining time to live, or null. */
  pinKind(keyHex: string): PinKind | null {
    const pin = this.pins.get(keyHex);
    if (!pin) return null;
    if (pin.hard) return "hard";
    const remainingMs = pin.softUntilMs - this.nowMs();
    if (remainingMs > 0) return { ttlMs: Math.ceil(remainingMs) };
    this.pins.delete(keyHex); // an expired soft pin
    return null;
  }

  /**
   * Pins blocks of the tenant with root `rootHex` and tells the SSD store about those it holds.
   * A hard pin that would take the tenant over hardPinQuotaBytes is refused whole with
   * RESOURCE_EXHAUSTED.
   */
  pin(
    rootHex: string,
    found: readonly PinTarget[],
    kind: PinRequestKind,
  ): Pick<PinReport, "hardPinnedBytes" | "hardPinQuotaBytes"> {
    const quota = this.options.hardPinQuotaBytes;
    const pinnedBefore = this.hardPinnedBytes.get(rootHex) ?? 0;
    if (kind.kind === "hard") {
      const extra = found.filter((e) => !this.pins.get(e.keyHex)?.hard).reduce((n, e) => n + e.bytes, 0);
      if (pinnedBefore + extra > quota) {
        throw new KvparkError(
          "RESOURCE_EXHAUSTED",
          `hard pin of ${extra} bytes would exceed the tenant's quota: ${pinnedBefore} of ${quota} bytes pinned`,
        );
      }
    }
    const ttlMs = kind.kind === "soft" ? kind.ttlMs || this.options.softPinTtlMsDefault : 0;
    for (const entry of found) {
      const pin = this.pins.get(entry.keyHex) ?? { hard: false, softUntilMs: 0 };
      if (kind.kind === "hard") {
        if (!pin.hard)
          this.hardPinnedBytes.set(rootHex, (this.hardPinnedBytes.get(rootHex) ?? 0) + entry.bytes);
        pin.hard = true;
      } else {
        pin.softUntilMs = Math.max(pin.softUntilMs, this.nowMs() + ttlMs);
      }
      this.pins.set(entry.keyHex, pin);
      if (entry.ssd === "stored") this.onStored(entry);
    }
    return { hardPinnedBytes: this.hardPinnedBytes.get(rootHex) ?? 0, hardPinQuotaBytes: quota };
  }

  /** Removes hard and soft pins of the blocks, in the store too; returns how many were pinned. */
  unpin(found: readonly PinTarget[]): number {
    let unpinnedBlocks = 0;
    for (const entry of found) {
      if (this.isPinned(entry.keyHex)) unpinnedBlocks++;
      this.forget(entry);
      if (entry.ssd === "stored" && this.ssd?.has(entry.key)) this.ssd.unpin(entry.key);
    }
    return unpinnedBlocks;
  }

  /** The block has just been stored on SSD: the store receives its pin, if any. */
  onStored(entry: PinTarget): void {
    const kind = this.pinKind(entry.keyHex);
    if (kind) this.ssd?.pin(entry.key, kind);
  }

  /** Drops the block's pins and gives its hard-pinned bytes back to the quota (the block is gone). */
  forget(entry: PinTarget): void {
    if (this.pins.get(entry.keyHex)?.hard) {
      const left = (this.hardPinnedBytes.get(entry.rootHex) ?? 0) - entry.bytes;
      if (left > 0) this.hardPinnedBytes.set(entry.rootHex, left);
      else this.hardPinnedBytes.delete(entry.rootHex);
    }
    this.pins.delete(entry.keyHex);
  }
}
