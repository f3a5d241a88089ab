import type { ModelCache } from "../model/model-cache.js";
import type { LoadedModel } from "../model/loader.js";
import type { Residents } from "./sequence.js";

/** What a finished sequence hands over (see Sequence.takeKept). */
export type Kept = { tokens: number[]; kv: ModelCache } | null | undefined;

/**
 * The engine's last sequence that finished and stored its KV (--resident-sequence): kept as it is,
 * so that a next request of the same tenant continuing it (an agent's next turn) takes over its
 * buffers instead of copying the same KV back from the RAM tier. Only for models whose every layer
 * attends over all its past positions: a recurrent state cannot go back to a shorter prefix, and a
 * restored sliding-window layer may lack rows older than its window. Its bytes count against the
 * engine's memory budget until it is taken, replaced, or dropped.
 */
export class ResidentSequence implements Residents {
  private held: { tenant: string; tokens: number[]; kv: ModelCache; bytes: number } | undefined;
  private readonly allowed: boolean;

  /** @param onDrop told the bytes of a sequence let go (garbage until the next collection). */
  constructor(
    enabled: boolean,
    model: LoadedModel,
    private readonly onDrop: (bytes: number) => void,
  ) {
    this.allowed = enabled && !model.hasRecurrentState && model.slidingWindow === null;
  }

  /** Bytes the held sequence takes (0 without one). */
  get bytes(): number {
    return this.held?.bytes ?? 0;
  }

  /** The held sequence's tenant. */
  get tenant(): string | undefined {
    return this.held?.tenant;
  }

  take(
    tenant: string,
    prompt: readonly number[],
    atLeast: number,
    reserveTokens: number,
  ): { kv: ModelCache; tokens: number } | undefined {
    const r = this.held;
    if (!r || r.tenant !== tenant) return undefined;
    const max = Math.min(r.tokens.length, prompt.length - 1);
    let n = 0;
    while (n < max && r.tokens[n] === prompt[n]) n++;
    if (n === 0 || n < atLeast) return undefined;
    this.held = undefined;
    r.kv.trim(r.kv.offset - n);
    r.kv.reserve(reserveTokens);
    return { kv: r.kv, tokens: n };
  }

  /**
   * After a sequence of `tenant` finished: holds what it stored and returns true. The held sequence
   * is the last that finished, so one that stored nothing (null) ends it too.
   */
  keep(tenant: string, kept: Kept, bytes: number): boolean {
    if (kept === null) this.drop();
    if (!kept || !this.allowed) return false;
    this.drop();
    this.held = { tenant, ...kept, bytes };
    return true;
  }

  /** Lets the held sequence go. */
  drop(): void {
    if (!this.held) return;
    this.onDrop(this.held.bytes);
    this.held = undefined;
  }
}
