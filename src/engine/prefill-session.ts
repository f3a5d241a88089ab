import type { PrefixCache } from "../cache/index.js";
import type { LoadedModel, ModelCache } from "../model/loader.js";
import type { FromEngine, ModelInfo, PrefillProgress } from "../engine-ipc.js";
import { kvBytes, snapshotsHeld, type Job, type JobNeed } from "./sequence.js";

/**
 * A PrefillStream call inside the engine: context arrives in pieces while, for example, a tool runs,
 * and each piece is prefilled into the session's KV and handed to the prefix cache, so that a later
 * Generate over the same context finds it cached. Idle between pieces; the scheduler wakes it.
 */
export class PrefillSession implements Job {
  private readonly tokens: number[] = [];
  private readonly kv: ModelCache;
  /** The prefix cache, or undefined when there is none. */
  private readonly cache: PrefixCache | undefined;
  private restored = false;
  chunkTokensDone = 0;
  private closing = false;
  private readonly progress: PrefillProgress = {
    tokensReceived: 0,
    tokensPrefilled: 0,
    tokensReused: 0,
    blocksPersisted: 0,
  };
  private readonly abortController = new AbortController();
  /** The restore in flight, if any; see Job.waiting. */
  waiting?: Promise<unknown>;
  private restoreError: unknown;

  constructor(
    readonly id: number,
    readonly tenant: string,
    private readonly persist: boolean,
    private readonly model: LoadedModel,
    private readonly info: ModelInfo,
    cache: PrefixCache | undefined,
    private readonly send: (msg: FromEngine) => void,
  ) {
    this.cache = cache;
    this.kv = model.newCache();
    // Recurrent layers keep their state at block boundaries for the blocks this session persists.
    if (cache && persist) this.kv.captureSnapshots(cache.blockTokens);
  }

  /** What the session needs: its restore, prefill of context received, its end, or the next piece. */
  get need(): JobNeed {
    if (!this.restored) return "start";
    return this.kv.offset < this.tokens.length || this.closing ? "prefill" : "idle";
  }

  /** Bytes of the context received so far, as KV. */
  get memoryBytes(): number {
    return kvBytes(this.info, this.tokens.length, this.persist ? snapshotsHeld(this.model, this.cache) : 0);
  }

  append(tokens: number[]): void {
    this.tokens.push(...tokens);
    this.progress.tokensReceived = this.tokens.length;
  }

  close(): void {
    this.closing = true;
  }

  begin(): void {
    this.restored = true;
    this.waiting = this.restore().then(
      () => (this.waiting = undefined),
      (err) => {
        this.restoreError = err;
        this.waiting = undefined;
      },
    );
  }

  /** The first piece (with a handle's context before it) may already be cached. */
  private async restore(): Promise<void> {
    if (this.cache && this.tokens.length > 0) {
      const match = await this.cache.lookupShared(this.tenant, this.tokens);
      if (match.tokens > 0) {
        const r = await this.cache.restore(match, this.kv, { signal: this.abortController.signal });
        this.progress.tokensReused = r.restoredTokens;
      }
    }
    this.report(false);
  }

  async prefillChunk(chunkTokens: number): Promise<boolean> {
    if (this.restoreError !== undefined) throw this.restoreError;
    this.chunkTokensDone = 0;
    if (this.kv.offset < this.tokens.length) {
      const t0 = performance.now();
      const chunk = this.tokens.slice(this.kv.offset, this.kv.offset + chunkTokens);
      this.model.forward(chunk, this.kv);
      this.chunkTokensDone = chunk.length;
      this.model.materialize(this.kv);
      this.cache?.observePrefill(chunk.length, performance.now() - t0);
      this.progress.tokensPrefilled += chunk.length;
      // Full blocks go to the cache as soon as they exist; the partial tail waits for the end.
      this.keep(false);
      this.report(false);
      return false;
    }
    if (!this.closing) return false;
    this.keep(true);
    this.report(true);
    return true;
  }

  private keep(partialTail: boolean): void {
    if (!this.cache) return;
    const r = this.cache.persist(this.tenant, this.tokens.slice(0, this.kv.offset), this.kv, {
      persist: this.persist,
      partialTail,
    });
    this.progress.blocksPersisted += r.blocksAdded;
    // The snapshots of the blocks just persisted are in the cache now (or could not be kept).
    this.kv.dropSnapshots(
      partialTail
        ? this.kv.offset
        : Math.floor(this.kv.offset / this.cache.blockTokens) * this.cache.blockTokens,
    );
  }

  private report(done: boolean): void {
    this.send({ type: "prefill-progress", id: this.id, progress: { ...this.progress }, done });
  }

  /** The context this session holds, for the handle the front end gives out. */
  get context(): number[] {
    return this.tokens;
  }

  abort(): void {
    this.abortController.abort();
  }
}
