import { KvparkError } from "../errors";
import type { PinKind } from "../store";
import type { CacheOptions } from "./config";
import type { PinRecord } from "./pin-log";
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

/** A block's pins: hard until unpinned, soft until an epoch time; and whose quota it counts against. */
interface PinState {
  key: Buffer;
  rootHex: string;
  bytes: number;
  hard: boolean;
  softUntilMs: number;
}

/** The bytes a tenant has pinned. */
export interface PinUsage {
  hardPinnedBytes: number;
  /** Bytes under unexpired soft pins only (a block pinned both ways counts as hard). */
  softPinnedBytes: number;
}

/**
 * Pins and quotas, the only place pin state is decided: which blocks are pinned, hard or soft and
 * until when, and how many bytes each tenant (by its root key) has pinned against
 * hardPinQuotaBytes, soft pins included until they expire. The tiers only receive the decision:
 * the RAM tier asks isPinned() whenever it looks for blocks to evict; the SSD store, whose eviction
 * runs in native code, is told pinKind() when a pinned block becomes stored (onStored()) and
 * whenever a stored block's pins change. Every change is also recorded in the SSD tier's pin
 * journal, from which a restart learns the pins of the blocks the store holds (learn()).
 */
export class Pins {
  private readonly pins = new Map<string, PinState>();
  private readonly byRoot = new Map<string, Set<string>>();

  constructor(
    private readonly options: Pick<
      CacheOptions,
      "hardPinQuotaBytes" | "softPinTtlMsDefault" | "softPinTtlMsMax"
    >,
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
    this.drop(keyHex); // an expired soft pin
    return null;
  }

  /** The block's pin as ListBlocks shows it: hard, or soft until an epoch time; null when unpinned. */
  describe(keyHex: string): { kind: "hard" } | { kind: "soft"; untilMs: number } | null {
    const kind = this.pinKind(keyHex);
    if (kind === null) return null;
    if (kind === "hard") return { kind: "hard" };
    return { kind: "soft", untilMs: this.pins.get(keyHex)!.softUntilMs };
  }

  /** The bytes the tenant with root `rootHex` has pinned now. */
  usage(rootHex: string): PinUsage {
    const usage = { hardPinnedBytes: 0, softPinnedBytes: 0 };
    for (const keyHex of [...(this.byRoot.get(rootHex) ?? [])]) {
      const kind = this.pinKind(keyHex);
      const bytes = this.pins.get(keyHex)?.bytes ?? 0;
      if (kind === "hard") usage.hardPinnedBytes += bytes;
      else if (kind) usage.softPinnedBytes += bytes;
    }
    return usage;
  }

  /**
   * Pins blocks of the tenant with root `rootHex`, tells the SSD store about those it holds and
   * records the change in the pin journal. A soft pin longer than softPinTtlMsMax is refused with
   * INVALID_ARGUMENT; a pin that would take the tenant's pinned bytes (hard and soft) over
   * hardPinQuotaBytes is refused whole with RESOURCE_EXHAUSTED.
   */
  pin(
    rootHex: string,
    found: readonly PinTarget[],
    kind: PinRequestKind,
  ): PinUsage & Pick<PinReport, "hardPinQuotaBytes"> {
    const quota = this.options.hardPinQuotaBytes;
    const ttlMs = kind.kind === "soft" ? kind.ttlMs || this.options.softPinTtlMsDefault : 0;
    if (ttlMs > this.options.softPinTtlMsMax) {
      throw new KvparkError(
        "INVALID_ARGUMENT",
        `a soft pin of ${ttlMs / 1000} s exceeds the longest allowed, ${this.options.softPinTtlMsMax / 1000} s (--soft-pin-ttl-max-seconds)`,
      );
    }
    const blocks = [...new Map(found.map((e) => [e.keyHex, e])).values()];
    const before = this.usage(rootHex);
    const pinnedBefore = before.hardPinnedBytes + before.softPinnedBytes;
    const extra = blocks.filter((e) => !this.isPinned(e.keyHex)).reduce((n, e) => n + e.bytes, 0);
    if (pinnedBefore + extra > quota) {
      throw new KvparkError(
        "RESOURCE_EXHAUSTED",
        `${kind.kind} pin of ${extra} bytes would exceed the tenant's quota: ${pinnedBefore} of ${quota} bytes pinned`,
      );
    }
    const changes: PinRecord[] = [];
    for (const entry of blocks) {
      const pin = this.state(entry);
      if (kind.kind === "hard") pin.hard = true;
      else pin.softUntilMs = Math.max(pin.softUntilMs, this.nowMs() + ttlMs);
      changes.push({ key: entry.key, hard: pin.hard, softUntilMs: pin.softUntilMs });
      if (entry.ssd === "stored") this.onStored(entry);
    }
    this.ssd?.recordPins(changes);
    return { ...this.usage(rootHex), hardPinQuotaBytes: quota };
  }

  /** Removes hard and soft pins of the blocks, in the store and the journal too; returns how many were pinned. */
  unpin(found: readonly PinTarget[]): number {
    let unpinnedBlocks = 0;
    for (const entry of found) {
      if (this.isPinned(entry.keyHex)) unpinnedBlocks++;
      this.forget(entry);
      if (entry.ssd === "stored" && this.ssd?.has(entry.key)) this.ssd.unpin(entry.key);
    }
    this.ssd?.recordPins(found.map((e) => ({ key: e.key, hard: false, softUntilMs: 0 })));
    return unpinnedBlocks;
  }

  /** The block has just been stored on SSD: the store receives its pin, if any. */
  onStored(entry: PinTarget): void {
    const kind = this.pinKind(entry.keyHex);
    if (kind) this.ssd?.pin(entry.key, kind);
  }

  /** Drops the block's pins; its bytes no longer count against the quota (the block is gone). */
  forget(entry: PinTarget): void {
    this.drop(entry.keyHex);
  }

  /**
   * A stored block's pins as the journal had them at open: they protect it again, in RAM once it is
   * restored there, and count against its tenant's quota (even one lowered since: new pins are then
   * refused until the tenant is under it).
   */
  learn(entry: PinTarget, pin: Pick<PinRecord, "hard" | "softUntilMs">): void {
    const state = this.state(entry);
    state.hard ||= pin.hard;
    state.softUntilMs = Math.max(state.softUntilMs, pin.softUntilMs);
  }

  private state(entry: PinTarget): PinState {
    let pin = this.pins.get(entry.keyHex);
    if (!pin) {
      pin = { key: entry.key, rootHex: entry.rootHex, bytes: entry.bytes, hard: false, softUntilMs: 0 };
      this.pins.set(entry.keyHex, pin);
      let keys = this.byRoot.get(entry.rootHex);
      if (!keys) this.byRoot.set(entry.rootHex, (keys = new Set()));
      keys.add(entry.keyHex);
    }
    return pin;
  }

  private drop(keyHex: string): void {
    const pin = this.pins.get(keyHex);
    if (!pin) return;
    this.pins.delete(keyHex);
    const keys = this.byRoot.get(pin.rootHex);
    keys?.delete(keyHex);
    if (keys?.size === 0) this.byRoot.delete(pin.rootHex);
  }
}
