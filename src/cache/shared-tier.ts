import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Cluster, Redis } from "ioredis";
import { KVBlockSchema } from "../../gen/kvpark/v1/kvblocks_pb";
import { normalizeRecord, type KVBlockRecord } from "./block-codec";
import { blockKey } from "./block-key";
import { redisClient } from "./shared-client";
import type {
  SharedEncoder,
  SharedLink,
  SharedTierCounters,
  SharedTierOptions,
  SharedWrite,
} from "./shared-types";
import { WriteQueue, admits } from "./write-queue";

/** KV bytes encoded per write batch: bounds the pause a batch puts on the engine's thread. */
const WRITE_BATCH_BYTES_MAX = 32 << 20;
/** Full blocks a lookup asks about per round trip. */
const LOOKUP_BATCH_BLOCKS = 32;
/**
 * Children of a block a lookup reads: HRANDFIELD with a positive count returns the whole hash when
 * it holds no more, so a parent with up to this many children is searched in full (about 330 bytes
 * a child: at most about 340 KB in one round trip). Beyond it a random sample of this many is read
 * and a partly shared block may be missed (the prompt then recomputes that block's tokens).
 */
export const CHILDREN_READ_MAX = 1024;
/** Commands in flight beyond which the tier is skipped rather than queued behind a stuck Redis. */
const PENDING_COMMANDS_MAX = 1024;
/** Keys of blocks restored from the tier, remembered until persist sees them (not written back). */
const RESTORED_KEYS_MAX = 65536;

/** A timeout of the tier's time budget. */
export class SharedTimeout extends Error {
  constructor(what: string, ms: number) {
    super(`shared tier ${what} took longer than ${ms} ms`);
    this.name = "SharedTimeout";
  }
}

/**
 * The shared tier: KV blocks in Redis (one server or a Redis Cluster), shared by every node that
 * names it. Per block, `<prefix>b:<key>` holds the block as a KVBlock message (the same bytes as
 * GetBlocks sends: header, payload, payload checksum) and `<prefix>c:<parent>` is a hash of the
 * parent's children (child key -> u32le token ids), the chain metadata a lookup needs for a block
 * the prompt shares only in part. Nothing read back is trusted: the caller verifies every block.
 *
 * Every call is bounded in time by the caller's deadline and never throws for Redis' sake: errors
 * are counted and the caller carries on with its local tiers. The client never queues commands
 * while disconnected (enableOfflineQueue off, no retries per request) and reconnects by itself.
 */
export class SharedTier {
  readonly counters: SharedTierCounters = {
    hits: 0,
    misses: 0,
    readBlocks: 0,
    readBytes: 0,
    writtenBlocks: 0,
    writtenBytes: 0,
    writeSkips: 0,
    writeErrors: 0,
    readErrors: 0,
    timeouts: 0,
    rejectedBlocks: 0,
    lostBlocks: 0,
    requests: 0,
    requestMs: 0,
  };
  private readonly client: Redis | Cluster;
  private readonly queue: WriteQueue<SharedWrite>;
  private pumping: Promise<void> | null = null;
  private pending = 0;
  private closed = false;
  private readonly restored = new Set<string>();
  private lastErrorLogMs = -Infinity;
  private unloggedErrors = 0;

  constructor(
    readonly options: SharedTierOptions,
    private readonly encode: SharedEncoder,
    private readonly log: (line: string) => void,
    private readonly nowMs: () => number = Date.now,
  ) {
    this.queue = new WriteQueue(options.writeQueueBlocksMax, options.writeQueueBytesMax);
    this.client = redisClient(options, (err) => this.onError(err));
  }

  /** Whether the client is connected and ready for commands now. */
  get connected(): boolean {
    return this.client.status === "ready";
  }

  get queueBlocks(): number {
    return this.queue.length;
  }

  get queuedBytes(): number {
    return this.queue.bytes;
  }

  private blockKeyName(key: Buffer): string {
    return `${this.options.keyPrefix}b:${key.toString("hex")}`;
  }

  private childrenKeyName(parent: Buffer): string {
    return `${this.options.keyPrefix}c:${parent.toString("hex")}`;
  }

  /**
   * The blocks of the tier that continue a chain at `parent`, whose next tokens are
   * tokens[at, limit): whole blocks found by their keys, LOOKUP_BATCH_BLOCKS per round trip, then
   * at most one block the prompt shares in part (read from the parent's children). Stops at the
   * first block the tier lacks or could not answer for (an error, a shard down, `deadline` in
   * performance.now() time passed), returning what it found before it; never throws.
   */
  async extend(
    parent: Buffer,
    tokens: readonly number[],
    at: number,
    limit: number,
    blockTokens: number,
    fingerprint: string,
    layout: number,
    deadline: number,
  ): Promise<SharedLink[]> {
    const found: SharedLink[] = [];
    {
      let whole = true;
      while (whole && at + blockTokens <= limit) {
        const links: SharedLink[] = [];
        let p = parent;
        for (let s = at; s + blockTokens <= limit && links.length < LOOKUP_BATCH_BLOCKS; s += blockTokens) {
          const ids = tokens.slice(s, s + blockTokens);
          const key = blockKey(p, ids, fingerprint, layout);
          links.push({ key, parent: p, tokenIds: ids, tokens: blockTokens });
          p = key;
        }
        const exists = await this.round(
          () => links.map((l) => this.client.exists(this.blockKeyName(l.key))),
          deadline,
          "lookup",
        );
        let k = 0;
        while (k < links.length && exists[k] === 1) k++;
        if (exists.length < links.length) k = 0; // the round was not sent
        found.push(...links.slice(0, k));
        at += k * blockTokens;
        if (k > 0) parent = links[k - 1].key;
        whole = k === links.length;
      }
      if (at < limit) {
        const partial = await this.partialChild(
          parent,
          tokens,
          at,
          limit,
          blockTokens,
          fingerprint,
          layout,
          deadline,
        );
        if (partial) found.push(partial);
      }
    }
    if (found.length > 0) this.counters.hits += found.length;
    else this.counters.misses++;
    return found;
  }

  /** The child of `parent` sharing the most leading tokens with tokens[at, limit), if any. */
  private async partialChild(
    parent: Buffer,
    tokens: readonly number[],
    at: number,
    limit: number,
    blockTokens: number,
    fingerprint: string,
    layout: number,
    deadline: number,
  ): Promise<SharedLink | null> {
    const [reply] = await this.round(
      () => [this.client.hrandfieldBuffer(this.childrenKeyName(parent), CHILDREN_READ_MAX, "WITHVALUES")],
      deadline,
      "lookup",
    );
    const fields = Array.isArray(reply) ? (reply as Buffer[]) : []; // an Error or no hash: nothing
    const want = Math.min(blockTokens, limit - at);
    let best: SharedLink | null = null;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const keyHex = fields[i].toString("latin1");
      const packed = fields[i + 1];
      if (!/^[0-9a-f]{64}$/.test(keyHex) || packed.length % 4 !== 0) continue;
      const ids = Array.from({ length: packed.length / 4 }, (_, j) => packed.readUInt32LE(j * 4));
      if (ids.length === 0 || ids.length > blockTokens) continue;
      let shared = 0;
      while (shared < Math.min(ids.length, want) && ids[shared] === tokens[at + shared]) shared++;
      if (shared === 0 || shared <= (best?.tokens ?? 0)) continue;
      // The metadata is Redis' word only: the key must be the one its tokens give under this parent.
      const key = Buffer.from(keyHex, "hex");
      if (!blockKey(parent, ids, fingerprint, layout).equals(key)) continue;
      best = { key, parent, tokenIds: ids, tokens: shared };
    }
    return best;
  }

  /**
   * The stored values of `keys`, read together within `deadline`: each a value, null where the tier
   * has none, or the Error that kept it (counted here); never throws.
   */
  async read(keys: readonly Buffer[], deadline: number): Promise<(Buffer | null | Error)[]> {
    const ttlMs = this.options.ttlSeconds * 1000;
    const values = await this.round(
      () =>
        keys.map((k) =>
          // A block read keeps its place: its TTL starts again, as Redis' LRU clock does.
          ttlMs > 0
            ? this.client.getexBuffer(this.blockKeyName(k), "PX", ttlMs)
            : this.client.getBuffer(this.blockKeyName(k)),
        ),
      deadline,
      "read",
    );
    for (const v of values) {
      if (Buffer.isBuffer(v)) {
        this.counters.readBlocks++;
        this.counters.readBytes += v.length;
      }
    }
    return values.length === keys.length ? values : keys.map(() => values[0]);
  }

  /** Decodes a stored value into a wire record; null when it is not a KVBlock message. */
  static decode(value: Buffer): KVBlockRecord | null {
    try {
      return normalizeRecord(fromBinary(KVBlockSchema, value));
    } catch {
      return null;
    }
  }

  /** Counts a block that failed verification and deletes it, so no node reads it again. */
  refuse(key: Buffer): void {
    this.counters.rejectedBlocks++;
    this.client.del(this.blockKeyName(key)).catch(() => {});
  }

  /** Remembers that a block came from the tier, so persist neither writes it back nor counts it new. */
  noteRestored(keyHex: string): void {
    if (this.restored.size >= RESTORED_KEYS_MAX) this.restored.clear();
    this.restored.add(keyHex);
  }

  /** Whether the block was restored from the tier (and forgets it). */
  takeRestored(keyHex: string): boolean {
    return this.restored.delete(keyHex);
  }

  /**
   * Whether a block this node wrote (or read) at `atMs` may be gone by now: its TTL half over. Such a
   * block is written again when persist meets it, so a block in use outlives its TTL in the tier.
   */
  stale(atMs: number): boolean {
    const ttlMs = this.options.ttlSeconds * 1000;
    return ttlMs > 0 && this.nowMs() - atMs > ttlMs / 2;
  }

  /** Whether the admission policy lets a block with these sightings into the tier. */
  admits(sightings: number, pinned: boolean): boolean {
    return admits(this.options.admission, sightings, pinned);
  }

  /** Queues a block for writing; false (and counted) when the queue is full or the tier closed. */
  enqueue(item: SharedWrite): boolean {
    if (this.closed || !this.queue.push(item)) {
      this.counters.writeSkips++;
      return false;
    }
    this.pumping ??= this.pump();
    return true;
  }

  /**
   * Writes queued blocks behind the requests, between the engine's steps: each turn encodes at
   * least one batch and at least as many bytes as were queued since the previous turn began (as
   * the SSD tier's pump does, so that a step queuing many blocks is not written one batch per
   * step), then every block's value (with the TTL) and its parent's children entry are sent
   * together. A failed write is counted and the block simply stays out of the tier.
   */
  private async pump(): Promise<void> {
    try {
      while (this.queue.length > 0 && !this.closed) {
        // Yield first, so the request that queued the blocks answers before they are encoded.
        await new Promise((resolve) => setImmediate(resolve));
        // Just after start (or a reconnect) the client may not be ready: a batch waits for it a while
        // instead of failing at once, since it holds up no request.
        await this.ready(Math.max(1000, this.options.timeoutMs * 5));
        await this.queue.standAside();
        let budget = this.queue.turnBytes();
        const writes: Promise<void>[] = [];
        do {
          const batch = this.queue.takeBatch(WRITE_BATCH_BYTES_MAX);
          budget -= batch.reduce((n, item) => n + item.bytes, 0);
          let records: KVBlockRecord[];
          try {
            records = this.encode(batch);
          } catch (err) {
            this.counters.writeErrors += batch.length;
            this.onError(err as Error);
            for (const item of batch) item.done(false);
            continue;
          }
          writes.push(...batch.map((item, i) => this.write(item, records[i])));
        } while (this.queue.length > 0 && budget > 0 && !this.closed);
        await Promise.all(writes);
      }
    } finally {
      this.pumping = null;
      if (this.queue.length > 0 && !this.closed) this.pumping = this.pump();
    }
  }

  private async write(item: SharedWrite, record: KVBlockRecord): Promise<void> {
    let ok = false;
    try {
      if (this.pending >= PENDING_COMMANDS_MAX) throw new Error("too many commands pending");
      const value = Buffer.from(toBinary(KVBlockSchema, create(KVBlockSchema, record)));
      const ttlMs = this.options.ttlSeconds * 1000;
      const name = this.blockKeyName(item.key);
      const children = this.childrenKeyName(item.parent);
      const ids = Buffer.from(item.tokenIds.buffer, item.tokenIds.byteOffset, item.tokenIds.byteLength);
      const t0 = performance.now();
      const sent: Promise<unknown>[] = [
        ttlMs > 0 ? this.client.set(name, value, "PX", ttlMs) : this.client.set(name, value),
        this.client.hset(children, item.keyHex, ids),
      ];
      if (ttlMs > 0) sent.push(this.client.pexpire(children, ttlMs));
      this.pending += sent.length;
      try {
        await Promise.all(sent);
      } finally {
        this.pending -= sent.length;
        this.counters.requests++;
        this.counters.requestMs += performance.now() - t0;
      }
      this.counters.writtenBlocks++;
      this.counters.writtenBytes += value.length;
      ok = true;
    } catch (err) {
      this.counters.writeErrors++;
      this.onError(err as Error);
    } finally {
      item.done(ok);
    }
  }

  /** Resolves when the client is ready, or after `ms` (the caller's commands then fail and count). */
  private async ready(ms: number): Promise<void> {
    if (this.client.status === "ready" || this.closed) return;
    let onReady!: () => void;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      onReady = resolve;
      timer = setTimeout(resolve, ms);
      this.client.once("ready", onReady);
    });
    clearTimeout(timer);
    this.client.off("ready", onReady);
  }

  /** Tells the pump when a request waits for its first token (WriteQueue.standAside). */
  deferWritesWhile(urgent: () => boolean): void {
    this.queue.urgent = urgent;
  }

  /** Resolves when every queued write has been answered. */
  async flush(): Promise<void> {
    await this.queue.flushing(async () => {
      while (this.pumping) await this.pumping;
    });
  }

  /**
   * One round trip: the commands `issue` sends go together (auto-pipelined, per node in a cluster).
   * Resolves by `deadline` with each command's reply, or an Error for one that failed or had not
   * answered by then (a SharedTimeout); the first failure of the round is counted. Commands left
   * behind at the deadline settle later, silently. Nothing is sent while too many are pending.
   */
  private async round<T>(issue: () => Promise<T>[], deadline: number, what: string): Promise<(T | Error)[]> {
    if (this.pending >= PENDING_COMMANDS_MAX) {
      const err = new Error(`${this.pending} commands pending (Redis slow or stuck), the tier is skipped`);
      this.onReadFailure(err);
      return [err];
    }
    const t0 = performance.now();
    let commands: Promise<T>[];
    try {
      commands = issue();
    } catch (err) {
      this.onReadFailure(err);
      return [err as Error];
    }
    this.pending += commands.length;
    void Promise.allSettled(commands).then(() => {
      this.pending -= commands.length;
    });
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new SharedTimeout(what, this.options.timeoutMs)),
        Math.max(0, deadline - t0),
      );
    });
    late.catch(() => {});
    try {
      const settled = await Promise.allSettled(commands.map((c) => Promise.race([c, late])));
      const out = settled.map((r) =>
        r.status === "fulfilled"
          ? r.value
          : r.reason instanceof Error
            ? r.reason
            : new Error(String(r.reason)),
      );
      const failed = out.find((r): r is Error => r instanceof Error);
      if (failed) this.onReadFailure(failed);
      return out;
    } finally {
      clearTimeout(timer);
      this.counters.requests++;
      this.counters.requestMs += performance.now() - t0;
    }
  }

  private onReadFailure(err: unknown): void {
    if (err instanceof SharedTimeout) this.counters.timeouts++;
    else this.counters.readErrors++;
    this.onError(err as Error);
  }

  /** Logs Redis' errors, at most one line a minute with the count of those left unsaid. */
  private onError(err: Error): void {
    const now = this.nowMs();
    if (now - this.lastErrorLogMs < 60_000) {
      this.unloggedErrors++;
      return;
    }
    const more = this.unloggedErrors > 0 ? ` (${this.unloggedErrors} more errors in the last minute)` : "";
    this.lastErrorLogMs = now;
    this.unloggedErrors = 0;
    this.log(`kvpark: cache: shared tier: ${err.message}${more}; requests go on without it`);
  }

  /** Writes what is queued (waiting at most `graceMs`), then disconnects. */
  async close(graceMs = 2000): Promise<void> {
    await Promise.race([this.flush(), new Promise((resolve) => setTimeout(resolve, graceMs).unref())]);
    this.closed = true;
    for (const item of this.queue.drain()) item.done(false);
    this.client.disconnect();
  }
}
