import { type KVBlockInput, type PrefixCache } from "../cache/index.js";
import { KvparkError, toKvparkError, type ErrorCode } from "../errors.js";
import { AsyncQueue } from "../util/async-queue.js";
import {
  KV_STREAM_WINDOW_BYTES,
  type BlockSelection,
  type FromEngine,
  type ToEngine,
} from "../engine-ipc.js";

/** A failure as it crosses IPC: the stable code and the user-facing message. */
export function errorOf(err: unknown): { code: ErrorCode; message: string } {
  const e = toKvparkError(err);
  return { code: e.code, message: e.message };
}

/** Bytes that crossed IPC arrive as Uint8Array; the cache works on Buffers over the same memory. */
function buf(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function selection(sel: BlockSelection): BlockSelection {
  return "keys" in sel ? { keys: sel.keys.map(buf) } : sel;
}

/**
 * The engine's KVBlocks operations: each call runs against the prefix cache between the scheduler's
 * steps (the engine's thread owns the cache), and PutBlocks, Export and Import receive what the front
 * end streams to them after they started.
 */
export class KvOperations {
  private readonly puts = new Map<number, AsyncQueue<KVBlockInput>>();
  /** Export and Import calls in flight: what the front end sends them after they started. */
  private readonly kvStreams = new Map<number, KvStream>();

  constructor(
    private readonly cache: PrefixCache | undefined,
    private readonly send: (msg: FromEngine) => void,
  ) {}

  /** A PutBlocks block, an Import piece or an Export acknowledgement of a call in flight. */
  receive(msg: Extract<ToEngine, { type: "kv-put" | "kv-data" | "kv-ack" }>): void {
    if (msg.type !== "kv-put") {
      this.kvStreams.get(msg.id)?.receive(msg);
      return;
    }
    const q = this.puts.get(msg.id);
    if (!q) return;
    if (msg.block === undefined) q.end();
    else q.push(msg.block);
  }

  /** The call was cancelled. */
  end(id: number): void {
    this.puts.get(id)?.end();
    this.kvStreams.get(id)?.end();
  }

  private noCache(): never {
    throw new KvparkError("FAILED_PRECONDITION", "the prefix cache is off on this server (--cache=false)");
  }

  /** Answers a KVBlocks call; results cross IPC as plain objects with Buffers. */
  async run(msg: Extract<ToEngine, { type: "kv" }>): Promise<void> {
    const { id, tenant } = msg;
    try {
      const cache = this.cache ?? this.noCache();
      switch (msg.op) {
        case "lookup": {
          // The local tiers only: Lookup answers what this node holds, without a round trip to Redis.
          const m = cache.lookup(tenant, msg.tokens);
          const blocks = m.blocks.map((b) => ({
            key: b.key,
            tier: b.tier === "shared" ? ("ssd" as const) : b.tier,
            start: b.start,
            tokens: b.tokens,
          }));
          const value = { tokens: m.tokens, ramTokens: m.ramTokens, ssdTokens: m.ssdTokens, blocks };
          this.send({ type: "kv-result", id, result: { op: "lookup", value } });
          return;
        }
        case "getBlocks":
          for await (const item of cache.getBlocks(tenant, msg.keys.map(buf)))
            this.send({ type: "kv-item", id, item });
          this.send({ type: "kv-result", id, result: { op: "getBlocks", value: null } });
          return;
        case "putBlocks": {
          const q = new AsyncQueue<KVBlockInput>();
          this.puts.set(id, q);
          try {
            const value = await cache.putBlocks(tenant, q);
            this.send({ type: "kv-result", id, result: { op: "putBlocks", value } });
          } finally {
            this.puts.delete(id);
          }
          return;
        }
        case "pin": {
          const kind =
            msg.kind.kind === "hard"
              ? { kind: "hard" as const }
              : { kind: "soft" as const, ttlMs: msg.kind.ttlMs };
          const value = cache.pin(tenant, selection(msg.selection), kind);
          this.send({ type: "kv-result", id, result: { op: "pin", value } });
          return;
        }
        case "unpin": {
          const value = cache.unpin(tenant, selection(msg.selection));
          this.send({ type: "kv-result", id, result: { op: "unpin", value } });
          return;
        }
        case "stats":
          this.send({
            type: "kv-result",
            id,
            result: { op: "stats", value: cache.stats(msg.all ? undefined : tenant) },
          });
          return;
        case "listBlocks": {
          const scope = msg.names ? { names: msg.names } : { tenant };
          const value = cache.listBlocks(scope, { size: msg.pageSize, after: msg.after });
          this.send({ type: "kv-result", id, result: { op: "listBlocks", value } });
          return;
        }
        case "evict": {
          const options = { tier: msg.tier, force: msg.force };
          const value = await cache.evict(tenant, selection(msg.selection), options);
          this.send({ type: "kv-result", id, result: { op: "evict", value } });
          return;
        }
        case "clear": {
          const value = await cache.clear(msg.all ? undefined : tenant);
          this.send({ type: "kv-result", id, result: { op: "clear", value } });
          return;
        }
        case "exportBundle": {
          const stream = new KvStream();
          this.kvStreams.set(id, stream);
          try {
            const value = { blocks: 0, skippedBlocks: 0, bytes: 0 };
            const sel = msg.selection && selection(msg.selection);
            for await (const data of cache.exportBundle(tenant, sel, {
              signal: stream.signal,
              report: value,
            })) {
              this.send({ type: "kv-data", id, data });
              await stream.sent(data.length);
            }
            this.send({ type: "kv-result", id, result: { op: "exportBundle", value } });
          } finally {
            this.kvStreams.delete(id);
          }
          return;
        }
        case "importBundle": {
          const stream = new KvStream();
          this.kvStreams.set(id, stream);
          const send = this.send;
          // Each piece is acknowledged once the import asks for the next: it has been read.
          const pieces = async function* () {
            for await (const piece of stream.pieces) {
              yield piece;
              send({ type: "kv-ack", id, bytes: piece.length });
            }
          };
          try {
            const value = await cache.importBundle(tenant, pieces());
            this.send({ type: "kv-result", id, result: { op: "importBundle", value } });
          } finally {
            this.kvStreams.delete(id);
          }
          return;
        }
      }
    } catch (err) {
      this.send({ type: "failed", id, ...errorOf(err) });
    }
  }
}

/**
 * What an Export or Import call receives from the front end after it started: Import's bundle
 * pieces (`kv-data`, the last without data) and Export's acknowledgements (`kv-ack`), with which
 * Export keeps at most KV_STREAM_WINDOW_BYTES unacknowledged. Ended when the call is cancelled.
 */
class KvStream {
  readonly pieces = new AsyncQueue<Buffer>();
  private readonly abort = new AbortController();
  private unacked = 0;
  private wake?: () => void;

  /** Aborted when the call is cancelled. */
  get signal(): AbortSignal {
    return this.abort.signal;
  }

  receive(msg: Extract<ToEngine, { type: "kv-data" | "kv-ack" }>): void {
    if (msg.type === "kv-ack") {
      this.unacked -= msg.bytes;
      this.wake?.();
    } else if (msg.data === undefined) {
      this.pieces.end();
    } else {
      this.pieces.push(buf(msg.data));
    }
  }

  /** The call was cancelled. */
  end(): void {
    this.pieces.end();
    this.abort.abort(new KvparkError("CANCELLED", "cancelled"));
    this.wake?.();
  }

  /** Counts `bytes` sent; resolves once the window has room again, throws once the call is cancelled. */
  async sent(bytes: number): Promise<void> {
    this.unacked += bytes;
    while (this.unacked > KV_STREAM_WINDOW_BYTES && !this.signal.aborted) {
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    this.signal.throwIfAborted();
  }
}
