import { randomBytes } from "node:crypto";
import { LRUCache } from "lru-cache";

interface Entry {
  tenant: string;
  tokens: number[];
}

/**
 * Handles given out by PrefillStream: an opaque name for a tenant's prefilled context (its token ids;
 * the KV itself lives in the prefix cache). Bounded in count and time; the least recently used go first.
 */
export class HandleTable {
  private readonly entries: LRUCache<string, Entry>;

  /** @param now the clock expiry is measured on, in ms (tests pass their own). */
  constructor(handlesMax: number, ttlMs: number, now: () => number = () => performance.now()) {
    this.entries = new LRUCache<string, Entry>({
      max: handlesMax,
      ttl: ttlMs,
      ttlResolution: 0,
      perf: { now },
    });
  }

  create(tenant: string, tokens: number[]): string {
    const handle = `ph_${randomBytes(16).toString("hex")}`;
    this.entries.set(handle, { tenant, tokens });
    return handle;
  }

  /** The context of a handle, or undefined when it is unknown, expired or another tenant's. */
  get(handle: string, tenant: string): number[] | undefined {
    const e = this.entries.get(handle);
    // Another tenant's handle is reported exactly like an unknown one.
    return e?.tenant === tenant ? e.tokens : undefined;
  }
}
