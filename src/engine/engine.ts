import * as path from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { core as mx } from "@frost-beta/mlx";
import { cacheOptionsFrom, PrefixCache, type CacheOptions, type KVBlockInput } from "../cache/index.js";
import type { Config } from "../config.js";
import { KvparkError, toKvparkError, type ErrorCode } from "../errors.js";
import { loadModel, type LoadedModel } from "../model/loader.js";
import { ModelTokenizer } from "../model/tokenizer.js";
import { AsyncQueue } from "../util/async-queue.js";
import { resolveModelDir } from "../model-gen/generate.js";
import { PrefillSession } from "./prefill-session.js";
import type { BlockSelection, FromEngine, ModelInfo, ToEngine } from "../engine-ipc.js";
import { Sequence, type Job } from "./sequence.js";

/** Phrase that, with --test-engine-abort, makes the engine run an operation MLX aborts on. */
export const TEST_ABORT_PHRASE = "__kvpark_abort__";

/** Bytes that crossed IPC arrive as Uint8Array; the cache works on Buffers over the same memory. */
function buf(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function selection(sel: BlockSelection): BlockSelection {
  return "keys" in sel ? { keys: sel.keys.map(buf) } : sel;
}

/** What the engine reports about a loaded model, served under `name`. */
export function modelInfo(name: string, dir: string, model: LoadedModel): ModelInfo {
  return {
    name,
    dir,
    fingerprint: model.fingerprint,
    modelType: model.config.modelType,
    vocabSize: model.config.vocabSize,
    contextTokens: model.config.maxPositionEmbeddings,
    numLayers: model.numLayers,
    kvHeads: model.kvHeads,
    headDim: model.headDim,
    weightBytes: model.weightBytes,
  };
}

/** How long a new engine waits for the SSD store's lock, held by a previous engine still exiting. */
const STORE_LOCK_WAIT_MS = 5000;

/**
 * Opens the prefix cache. A previous engine whose front end died ends itself within a few tens of
 * milliseconds (see parent-watch.ts), but a restart can be quicker; its lock is waited for, briefly.
 */
async function openCache(
  model: LoadedModel,
  options: Partial<CacheOptions>,
  log: (message: string) => void,
): Promise<PrefixCache> {
  const deadline = Date.now() + STORE_LOCK_WAIT_MS;
  for (;;) {
    try {
      return await PrefixCache.open(model, options, { log });
    } catch (err) {
      if (!(err instanceof KvparkError && err.code === "KV_LOCKED") || Date.now() >= deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** A failure as it crosses IPC: the stable code and the user-facing message. */
function errorOf(err: unknown): { code: ErrorCode; message: string } {
  const e = toKvparkError(err);
  return { code: e.code, message: e.message };
}

/**
 * Runs every admitted job a step at a time, round robin: one restore, prefill chunk or decode token
 * per job per turn. Each request keeps its own KV, so interleaving never changes a result, and a long
 * prefill delays other requests' tokens by one chunk at a time. Between steps the event loop runs, so
 * cancellations, new requests and KVBlocks calls are taken in.
 */
export class Engine {
  private readonly active: Job[] = [];
  private readonly sessions = new Map<number, PrefillSession>();
  private readonly puts = new Map<number, AsyncQueue<KVBlockInput>>();
  private running = false;
  /** Resolves the scheduler's sleep when new work arrives while every job waits for I/O. */
  private wake?: () => void;
  private stepsSinceGc = 0;

  private constructor(
    private readonly config: Config,
    private readonly model: LoadedModel,
    private readonly tokenizer: ModelTokenizer,
    private readonly cache: PrefixCache | undefined,
    readonly info: ModelInfo,
    private readonly send: (msg: FromEngine) => void,
  ) {}

  static async open(config: Config, send: (msg: FromEngine) => void): Promise<Engine> {
    const dir = await resolveModelDir(config.model, config.dataDir, (what, done, total) =>
      send({ type: "loading", what, loadedBytes: done, totalBytes: total }),
    );
    let lastReport = 0;
    const model = await loadModel(dir, {
      prefillChunkTokens: Math.max(config.prefillChunkTokens, 16),
      fingerprintCacheFile: path.join(config.dataDir, "fingerprints.json"),
      onProgress: (loadedBytes: number, totalBytes: number) => {
        // One progress line per ~5% keeps the log readable for multi-gigabyte models.
        if (loadedBytes === totalBytes || loadedBytes - lastReport >= totalBytes / 20) {
          lastReport = loadedBytes;
          send({ type: "loading", what: "weights", loadedBytes, totalBytes });
        }
      },
    });
    const tokenizer = ModelTokenizer.fromDir(dir);
    const cache = config.cache
      ? await openCache(model, cacheOptionsFrom(config, path.join(config.dataDir, "cache")), (message) =>
          send({ type: "log", message }),
        )
      : undefined;
    const info = modelInfo(config.modelName || path.basename(dir), dir, model);
    return new Engine(config, model, tokenizer, cache, info, send);
  }

  handle(msg: ToEngine): void {
    switch (msg.type) {
      case "generate":
        if (this.config.testEngineAbort && this.tokenizer.decode(msg.tokens).includes(TEST_ABORT_PHRASE)) {
          // A half-precision matmul is unsupported on the CPU backend and aborts inside MLX, as a
          // real engine failure would.
          const a = mx.ones([4, 4], mx.float16);
          mx.eval(mx.matmul(a, a));
        }
        this.schedule(
          new Sequence(
            msg,
            this.model,
            this.tokenizer,
            this.info,
            this.cache,
            this.config.prefillChunkTokens,
            this.send,
          ),
        );
        return;
      case "cancel":
        this.drop(msg.id);
        return;
      case "prefill-open": {
        const s = new PrefillSession(
          msg.id,
          msg.tenant,
          msg.persist,
          this.model,
          this.cache,
          this.config.prefillChunkTokens,
          this.send,
        );
        s.append(msg.tokens);
        this.sessions.set(msg.id, s);
        this.schedule(s);
        return;
      }
      case "prefill-append": {
        const s = this.sessions.get(msg.id);
        s?.append(msg.tokens);
        if (s) this.schedule(s);
        return;
      }
      case "prefill-close": {
        const s = this.sessions.get(msg.id);
        s?.close();
        if (s) this.schedule(s);
        return;
      }
      case "kv":
        void this.kv(msg);
        return;
      case "kv-put": {
        const q = this.puts.get(msg.id);
        if (!q) return;
        if (msg.block === undefined) q.end();
        else q.push(msg.block);
        return;
      }
    }
  }

  private drop(id: number): void {
    const i = this.active.findIndex((j) => j.id === id);
    if (i >= 0) this.active.splice(i, 1)[0].abort();
    this.sessions.get(id)?.abort();
    this.sessions.delete(id);
    this.puts.get(id)?.end();
  }

  private schedule(job: Job): void {
    if (!this.active.includes(job)) this.active.push(job);
    this.wake?.();
    if (!this.running) void this.loop();
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.active.length > 0) {
        let stepped = false;
        for (const job of [...this.active]) {
          if (!this.active.includes(job)) continue; // cancelled meanwhile
          if (job.waiting) continue; // its I/O is in flight; others run meanwhile
          stepped = true;
          if (job instanceof PrefillSession && !job.runnable) {
            // Waiting for the next piece of context; appending reschedules it.
            this.active.splice(this.active.indexOf(job), 1);
            continue;
          }
          let done: boolean;
          try {
            done = await job.step();
          } catch (err) {
            done = true;
            if (this.active.includes(job)) this.send({ type: "failed", id: job.id, ...errorOf(err) });
          }
          if (done) {
            const i = this.active.indexOf(job);
            if (i >= 0) this.active.splice(i, 1);
            this.sessions.delete(job.id);
            this.collect(true);
          }
          // MLX releases memory in finalizers that run once the event loop turns; this also lets
          // IPC messages (cancellations, new requests, KV calls) in between steps.
          await yieldToEventLoop();
        }
        this.collect(false);
        if (!stepped) {
          // Every job waits for I/O: sleep until one of them can go on (or new work arrives).
          const waits = this.active
            .map((j) => j.waiting)
            .filter((w): w is Promise<unknown> => w !== undefined);
          if (waits.length) await Promise.race([...waits, new Promise<void>((r) => (this.wake = r))]);
          this.wake = undefined;
        }
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * MLX frees an array's memory only when its JS wrapper is garbage-collected, and V8 does not see
   * that memory, so the engine collects explicitly: after each request, every few dozen steps, and
   * when the cache has dropped enough blocks.
   */
  private collect(force: boolean): void {
    if (this.cache?.collectIfNeeded()) return;
    if (force || ++this.stepsSinceGc >= 32) {
      this.stepsSinceGc = 0;
      global.gc?.();
    }
  }

  private noCache(): never {
    throw new KvparkError("FAILED_PRECONDITION", "the prefix cache is off on this server (--cache=false)");
  }

  /** Answers a KVBlocks call; results cross IPC as plain objects with Buffers. */
  private async kv(msg: Extract<ToEngine, { type: "kv" }>): Promise<void> {
    const { id, tenant } = msg;
    try {
      const cache = this.cache ?? this.noCache();
      switch (msg.op) {
        case "lookup": {
          const m = cache.lookup(tenant, msg.tokens);
          const blocks = m.blocks.map((b) => ({
            key: b.key,
            tier: b.tier,
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
      }
    } catch (err) {
      this.send({ type: "failed", id, ...errorOf(err) });
    }
  }

  /** Writes what the cache has queued and releases the SSD store. */
  async close(): Promise<void> {
    for (const job of this.active.splice(0)) job.abort();
    await this.cache?.close();
  }
}
