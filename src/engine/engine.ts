import * as path from "node:path";
import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { core as mx } from "@frost-beta/mlx";
import { cacheOptionsFrom, PrefixCache, snapshotBytes, type CacheOptions } from "../cache/index.js";
import type { Config } from "../config.js";
import { KvparkError } from "../errors.js";
import { loadModel, type LoadedModel } from "../model/loader.js";
import { ModelTokenizer } from "../model/tokenizer.js";
import { resolveModelDir } from "../model-gen/generate.js";
import { allocatorName, allocatorPurge } from "../store/native.js";
import { Collector } from "./collector.js";
import { PrefillSession } from "./prefill-session.js";
import { type FromEngine, type ModelInfo, type ToEngine } from "../engine-ipc.js";
import { errorOf, KvOperations } from "./kv-operations.js";
import { fairOrder } from "./fair-order.js";
import { ResidentSequence } from "./resident.js";
import { Sequence, type Job } from "./sequence.js";
import { decodeGarbageBytes, stepWorkBytes } from "./work-bytes.js";

/** Phrase that, with --test-engine-abort, makes the engine run an operation MLX aborts on. */
export const TEST_ABORT_PHRASE = "__kvpark_abort__";

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
    attentionLayers: model.numLayers - model.recurrentLayers.length,
    kvHeads: model.kvHeads,
    headDim: model.headDim,
    recurrentStateBytes: model.recurrentShape
      ? model.recurrentLayers.length * snapshotBytes(model.recurrentShape)
      : 0,
    weightBytes: model.weightBytes,
    allocator: allocatorName(),
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

/** Largest decode batch: beyond it, more sequences read the weights no cheaper per token here. */
const DECODE_ROWS_LIMIT = 64;

/** How often the engine reports its memory and scheduler to the front end. */
const STATS_INTERVAL_MS = 1000;
/** The engine's event-loop delay between two stats reports (sampled every 20 ms; created on first report). */
let loopDelay: IntervalHistogram | undefined;

/** Prompt tokens of the warm-up prefill at start (see Engine.warmUp). */
const WARM_UP_TOKENS = 64;

/**
 * Runs every admitted job in steps. A step decodes the next token of every decoding sequence in one
 * batched forward pass, then computes prefill chunks while the step's token budget
 * (--step-tokens-max) lasts, at least one: a long prompt never holds up decoding for more than a
 * chunk, and new requests join (and finished ones leave) between steps. Each sequence keeps its own
 * KV and attends over it alone, and the batched products run at calibrated row counts
 * (model/batch-rows.ts), so a sequence's tokens and logits do not depend on what runs beside it.
 *
 * Jobs are admitted within the engine's memory budget (--engine-memory-max), waiting in a queue
 * otherwise, and taken in round robin between tenants, then between a tenant's jobs.
 */
export class Engine {
  /** Admitted jobs, in arrival order. */
  private readonly active: Job[] = [];
  /** Jobs waiting for memory, in arrival order. */
  private readonly queued: Job[] = [];
  private readonly sessions = new Map<number, PrefillSession>();
  /** KVBlocks calls, answered between steps. */
  private readonly kvOps: KvOperations;
  private running = false;
  /** Resolves the scheduler's sleep when new work arrives while every job waits for I/O. */
  private wake?: () => void;
  /** Advances each step, rotating who goes first. */
  private turn = 0;
  private steps = 0;
  /** When stats were last reported (performance.now()). */
  private statsAt = 0;
  private lastDecodeBatch = 0;
  /** Reclaims the MLX memory the engine drops. */
  private readonly collector: Collector;
  /** The last finished sequence, for a next turn to take over (see ResidentSequence). */
  private readonly resident: ResidentSequence;
  private readonly statsTimer: NodeJS.Timeout;
  /** Bytes the budget always counts: weights, the RAM tier's budget, one step's working memory. */
  private readonly fixedBytes: number;
  /** Temporaries of one prefill chunk (see stepWorkBytes). */
  private readonly chunkWorkBytes: number;
  private readonly memoryMax: number;
  /** Most sequences one decode step runs together (the row count calibrated at load). */
  private readonly decodeRowsMax: number;
  private readonly chunkTokens: number;

  private constructor(
    private readonly config: Config,
    private readonly model: LoadedModel,
    private readonly tokenizer: ModelTokenizer,
    private readonly cache: PrefixCache | undefined,
    readonly info: ModelInfo,
    private readonly send: (msg: FromEngine) => void,
    decodeRowsMax: number,
  ) {
    this.decodeRowsMax = decodeRowsMax;
    this.kvOps = new KvOperations(cache, send);
    this.chunkTokens = Math.min(config.prefillChunkTokens, config.stepTokensMax);
    this.collector = new Collector(cache, config.engineIdlePurgeMs, config.engineKeptBytesMax);
    this.resident = new ResidentSequence(config.residentSequence, model, (bytes) =>
      this.collector.dropped(bytes),
    );
    // The RAM tier's budget and the buffers SSD restores keep.
    const ram = cache ? config.ramBytesMax + cache.heldBytes : 0;
    // The process as loaded: weights, runtime, the tokenizer and the store's index; not the pages
    // loading freed, which the allocator keeps for reuse for a while.
    global.gc?.();
    allocatorPurge();
    const loaded = Math.max(process.memoryUsage.rss(), model.weightBytes);
    this.chunkWorkBytes = stepWorkBytes(model, this.chunkTokens);
    this.fixedBytes = loaded + ram + this.chunkWorkBytes;
    this.memoryMax = config.engineMemoryMax || loaded + ram + 2 * 1024 ** 3;
    // A request waiting for its first token takes its steps before a backlog of blocks is encoded.
    const waits = (j: Job) => j instanceof Sequence && (j.need === "start" || j.need === "prefill");
    cache?.deferWritesWhile(() => this.active.some(waits) || this.queued.some(waits));
    this.statsTimer = setInterval(() => this.reportStats(), STATS_INTERVAL_MS);
    this.statsTimer.unref();
  }

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
    const decodeRowsMax = Math.min(config.requestsMax, config.stepTokensMax, DECODE_ROWS_LIMIT);
    model.calibrateBatchRows(decodeRowsMax);
    const tokenizer = ModelTokenizer.fromDir(dir);
    const cache = config.cache
      ? await openCache(model, cacheOptionsFrom(config, path.join(config.dataDir, "cache")), (message) =>
          send({ type: "log", message }),
        )
      : undefined;
    const info = modelInfo(config.modelName || path.basename(dir), dir, model);
    const engine = new Engine(config, model, tokenizer, cache, info, send, decodeRowsMax);
    engine.warmUp();
    // What the warm-up left for the first requests goes back to the kernel if none come.
    engine.collector.idle(() => !engine.running);
    engine.reportStats();
    return engine;
  }

  /**
   * Pays a new process's first-use costs before it reports ready instead of in its first request:
   * a short prefill and a decode step on a cache of its own (the BLAS threads, the compiled
   * attention, the allocator's first buffers), then with a prefix cache its persist and restore
   * paths from that sequence into another and a step there (PrefixCache.warmUp). Nothing is
   * cached or persisted.
   */
  private warmUp(): void {
    // Even, and with room for the two steps after it within the model's context.
    const n = Math.min(WARM_UP_TOKENS, (this.info.contextTokens - 2) & ~1);
    if (n < 2) return;
    const tokens = Array.from({ length: n }, (_, i) => i % this.model.config.vocabSize);
    const cache = this.model.newCache(n + 1);
    // Recurrent layers keep their state at the half, where the restore's first part ends.
    if (this.cache) cache.captureSnapshots(n / 2);
    mx.eval(this.model.forward(tokens, cache));
    mx.eval(this.model.forward([0], cache));
    if (this.cache) {
      const restored = this.model.newCache(n + 2);
      this.cache.warmUp(cache, restored, this.info.contextTokens, this.memoryMax - this.fixedBytes);
      mx.eval(this.model.forward([0], restored));
    }
    global.gc?.();
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
        this.enqueue(
          new Sequence(msg, this.model, this.tokenizer, this.info, this.cache, this.send, this.resident),
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
          this.info,
          this.cache,
          this.send,
        );
        s.append(msg.tokens);
        this.sessions.set(msg.id, s);
        this.enqueue(s);
        return;
      }
      case "prefill-append":
      case "prefill-close": {
        const s = this.sessions.get(msg.id);
        if (!s) return;
        if (msg.type === "prefill-append") s.append(msg.tokens);
        else s.close();
        this.wake?.();
        if (!this.running) void this.loop();
        return;
      }
      case "kv":
        // What is evicted or cleared from the cache is not served from the resident sequence either.
        if (msg.op === "evict" || (msg.op === "clear" && (msg.all || this.resident.tenant === msg.tenant)))
          this.resident.drop();
        void this.kvOps.run(msg);
        return;
      case "kv-put":
      case "kv-data":
      case "kv-ack":
        this.kvOps.receive(msg);
        return;
    }
  }

  private drop(id: number): void {
    for (const list of [this.active, this.queued]) {
      const i = list.findIndex((j) => j.id === id);
      if (i >= 0) list.splice(i, 1)[0].abort();
    }
    this.sessions.delete(id);
    this.kvOps.end(id);
  }

  private enqueue(job: Job): void {
    this.collector.busy();
    this.queued.push(job);
    this.wake?.();
    if (!this.running) void this.loop();
  }

  /** Bytes the budget counts as taken now. */
  private reservedBytes(): number {
    return this.active.reduce((sum, j) => sum + j.memoryBytes, this.fixedBytes + this.resident.bytes);
  }

  /**
   * Moves queued jobs into the running set while they fit the memory budget, in the fair order. The
   * first that does not fit stops admission, so a large request is not passed over forever; with
   * nothing running, one job is admitted whatever its size, so that the engine always progresses.
   * Memory that finished work dropped is collected first when the job needs it.
   */
  private admit(): void {
    let reserved = this.reservedBytes();
    for (const job of fairOrder(this.queued, this.turn)) {
      const garbage = this.collector.pending;
      if (garbage > 0 && reserved + garbage + job.memoryBytes > this.memoryMax) this.collector.step(true);
      if (this.resident.bytes > 0 && reserved + job.memoryBytes > this.memoryMax) {
        reserved -= this.resident.bytes;
        this.resident.drop();
        this.collector.step(true);
      }
      if (this.active.length > 0 && reserved + job.memoryBytes > this.memoryMax) break;
      this.queued.splice(this.queued.indexOf(job), 1);
      this.active.push(job);
      reserved += job.memoryBytes;
    }
  }

  private async loop(): Promise<void> {
    this.running = true;
    try {
      while (this.active.length > 0 || this.queued.length > 0) {
        this.admit();
        for (const job of this.active) if (job.need === "start") job.begin();
        const decoded = await this.decodeStep();
        const prefilled = await this.prefillStep(decoded);
        this.turn++;
        if (performance.now() - this.statsAt >= STATS_INTERVAL_MS / 4) this.reportStats();
        if (decoded > 0 || prefilled > 0) {
          this.steps++;
          // MLX releases memory in finalizers that run once the event loop turns; this also lets
          // IPC messages (cancellations, new requests, KV calls) in between steps.
          await yieldToEventLoop();
          continue;
        }
        // Nothing ran: every job waited for I/O or for more context. A restore may have ended
        // meanwhile (the steps await); otherwise sleep until one ends or new work arrives.
        if (this.active.some((j) => !j.waiting && j.need !== "idle")) continue;
        // Requests that arrived during the step are admitted now, not after the next wake-up.
        const admitted = this.active.length;
        this.admit();
        if (this.active.length > admitted) continue;
        const waits = this.active.map((j) => j.waiting).filter((w): w is Promise<unknown> => w !== undefined);
        if (waits.length === 0 && this.queued.length === 0) break; // prefill sessions waiting for context
        await Promise.race([...waits, new Promise<void>((r) => (this.wake = r))]);
        this.wake = undefined;
      }
    } finally {
      this.running = false;
      this.collector.idle(() => !this.running);
    }
  }

  /** One batched forward over the decoding sequences; returns how many it ran. */
  private async decodeStep(): Promise<number> {
    const ready = fairOrder(
      this.active.filter((j): j is Sequence => j instanceof Sequence && j.need === "decode" && !j.waiting),
      this.turn,
    ).slice(0, this.decodeRowsMax);
    if (ready.length === 0) return 0;
    // A sequence whose grammar is complete finishes here, without a forward pass.
    const inputs = await Promise.all(ready.map((s) => this.attempt(s, () => s.decodeInput())));
    const members = ready.filter((s, i) => inputs[i] !== undefined && this.active.includes(s));
    const tokens = members.map((s) => inputs[ready.indexOf(s)]!);
    for (const s of ready) if (!members.includes(s) && this.active.includes(s)) this.finished(s);
    if (members.length === 0) return 0;
    let logits: mx.array;
    try {
      logits = this.model.decodeBatch(
        tokens,
        members.map((s) => s.kvCache),
      );
      mx.eval(logits);
    } catch (err) {
      for (const s of members) this.fail(s, err);
      return members.length;
    }
    this.lastDecodeBatch = members.length;
    for (const [i, s] of members.entries()) {
      if (!this.active.includes(s)) continue; // cancelled meanwhile
      const done = await this.attempt(s, () => s.acceptLogits(logits.index(i)));
      if (done) this.finished(s);
    }
    this.collector.dropped(decodeGarbageBytes(this.model, members.length));
    this.collector.step();
    return members.length;
  }

  /**
   * Prefill chunks within what the step's token budget leaves after decoding, at least one chunk when
   * any job needs one. Chunk boundaries depend on the prompt alone (never on the budget), so a
   * prompt's result does not depend on what else runs.
   */
  private async prefillStep(decodedRows: number): Promise<number> {
    let budget = this.config.stepTokensMax - decodedRows;
    let chunks = 0;
    for (const job of fairOrder(this.active, this.turn)) {
      if (job.need !== "prefill" || job.waiting || !this.active.includes(job)) continue;
      if (chunks > 0 && budget < this.chunkTokens) break;
      const done = await this.attempt(job, () => job.prefillChunk(this.chunkTokens));
      chunks++;
      budget -= this.chunkTokens;
      if (done === true) this.finished(job);
      // A chunk's temporaries can be large: they count toward the next collection.
      this.collector.dropped(stepWorkBytes(this.model, job.chunkTokensDone));
      this.collector.step();
    }
    return chunks;
  }

  /** Runs one job's part of a step; a failure fails that job alone. Resolves undefined then. */
  private async attempt<T>(job: Job, part: () => Promise<T>): Promise<T | undefined> {
    try {
      return await part();
    } catch (err) {
      this.fail(job, err);
      return undefined;
    }
  }

  private fail(job: Job, err: unknown): void {
    if (this.active.includes(job)) this.send({ type: "failed", id: job.id, ...errorOf(err) });
    this.finished(job);
  }

  private finished(job: Job): void {
    const i = this.active.indexOf(job);
    if (i >= 0) this.active.splice(i, 1);
    this.sessions.delete(job.id);
    // Its KV is garbage now (the cache holds copies of what it keeps), unless kept as the resident.
    const kept = job instanceof Sequence && this.resident.keep(job.tenant, job.takeKept(), job.memoryBytes);
    if (!kept) this.collector.dropped(job.memoryBytes);
    this.collector.step();
  }

  private reportStats(): void {
    this.statsAt = performance.now();
    if (!loopDelay) {
      loopDelay = monitorEventLoopDelay({ resolution: 20 });
      loopDelay.enable();
    }
    // Nanoseconds; no sample yet (NaN mean) reports nothing rather than a zero delay.
    const ms = (ns: number) => (Number.isFinite(ns) && loopDelay!.count > 0 ? ns / 1e6 : undefined);
    const delay = {
      eventLoopDelayMeanMs: ms(loopDelay.mean),
      eventLoopDelayP99Ms: ms(loopDelay.percentile(99)),
      eventLoopDelayMaxMs: ms(loopDelay.max),
    };
    loopDelay.reset();
    const allocator = this.collector.trim(this.memoryMax);
    this.send({
      type: "engine-stats",
      stats: {
        rssBytes: process.memoryUsage.rss(),
        memoryMaxBytes: this.memoryMax,
        memoryReservedBytes: this.reservedBytes(),
        sequencesRunning: this.active.length,
        sequencesWaiting: this.queued.length,
        decodeBatch: this.lastDecodeBatch,
        steps: this.steps,
        heapUsedBytes: process.memoryUsage().heapUsed,
        allocatorActiveBytes: allocator.activeBytes,
        allocatorKeptBytes: allocator.keptBytes,
        allocatorPurges: allocator.purges,
        ...delay,
      },
    });
  }

  /** Writes what the cache has queued and releases the SSD store. */
  async close(): Promise<void> {
    clearInterval(this.statsTimer);
    this.collector.busy();
    for (const job of [...this.active.splice(0), ...this.queued.splice(0)]) job.abort();
    await this.cache?.close();
  }
}
