import { randomBytes } from "node:crypto";

interface Entry {
  tenant: string;
  tokens: number[];
  expiresAt: number;
}

/**
 * Handles given out by PrefillStream: an opaque name for a tenant's prefilled context (its token ids;
 * the KV itself lives in the prefix cache). Bounded in count and time; the oldest go first.
 */
export class HandleTable {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly handlesMax: number,
    private readonly ttlMs: number,
  ) {}

  create(tenant: string, tokens: number[]): string {
    const handle = `ph_${randomBytes(16).toString("hex")}`;
    this.entries.set(handle, { tenant, tokens, expiresAt: Date.now() + this.ttlMs });
    while (this.entries.size > this.handlesMax) this.entries.delete(this.entries.keys().next().value!);
    return handle;
  }

  /** The context of a handle, or undefined when it is unknown, expired or another tenant's. */
  get(handle: string, tenant: string): number[] | undefined {
    const e = this.entries.get(handle);
    if (!e) return undefined;
    if (e.expiresAt < Date.now()) {
      this.entries.delete(handle);
      return undefined;
    }
    // Another tenant's handle is reported exactly like an unknown one.
    return e.tenant === tenant ? e.tokens : undefined;
  }
}
