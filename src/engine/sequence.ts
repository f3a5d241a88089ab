import type { core as mx } from "@frost-beta/mlx";
import type { PrefixCache } from "../cache/index.js";
import { CACHE_STEP_TOKENS } from "../model/kv-cache.js";
import type { LoadedModel, ModelCache } from "../model/loader.js";
import { Sampler } from "../model/sampler.js";
import { outputMarkers } from "../model/tool-calls.js";
import { IncrementalDetokenizer, type ModelTokenizer } from "../model/tokenizer.js";
import type {
  CacheActivity,
  CacheReport,
  FinishReason,
  FromEngine,
  ModelInfo,
  ToEngine,
} from "../engine-ipc.js";
import { Constraint, ConstraintCompiler } from "./constraint.js";
import { StopStringFilter } from "./stop-strings.js";

type GenerateMsg = Extract<ToEngine, { type: "generate" }>;

const now = () => performance.timeOrigin + performance.now();

/** Least time between two progress reports of a prefill, and before the first one. */
const PROGRESS_INTERVAL_MS = 250;

/** What a unit of engine work needs next from the scheduler. */
export type JobNeed = "start" | "prefill" | "decode" | "idle";

/** What a unit of engine work exposes to the scheduler. */
export interface Job {
  readonly id: number;
  readonly tenant: string;
  /** What it needs next: to start (look up and restore), a prefill chunk, a decode step, nothing yet. */
  readonly need: JobNeed;
  /** Begins the job: the cache lookup and restore run in the background (see `waiting`). */
  begin(): void;
  /** Computes one prefill chunk of at most `tokens`; resolves true when the job has finished. */
  prefillChunk(tokens: number): Promise<boolean>;
  /** Tokens the last prefill chunk computed: its temporaries scale with them. */
  readonly chunkTokensDone: number;
  /** Called when the job is dropped before finishing (cancelled, engine closing). */
  abort(): void;
  /**
   * Set while the job waits for I/O (an SSD restore): the scheduler runs other jobs meanwhile and
   * sleeps on this promise only when every job is waiting.
   */
  readonly waiting?: Promise<unknown>;
  /** Bytes the job's KV takes, or will take once begun, for the engine's memory budget. */
  readonly memoryBytes: number;
}

/**
 * Bytes of a sequence's cache: float32 KV of the attention layers for `tokens` positions,
 * allocated in steps of CACHE_STEP_TOKENS, and with recurrent layers their state plus the
 * `snapshots` copies of it kept for the prefix cache (see snapshotsHeld).
 */
export function kvBytes(info: ModelInfo, tokens: number, snapshots = 0): number {
  const positions = Math.ceil(Math.max(tokens, 1) / CACHE_STEP_TOKENS) * CACHE_STEP_TOKENS;
  const kv = positions * info.attentionLayers * 2 * info.kvHeads * info.headDim * 4;
  return kv + info.recurrentStateBytes * (1 + snapshots);
}

/**
 * Most recurrent snapshots a sequence holds at once when it keeps them for the prefix cache: those
 * of one prefill chunk's block boundaries and the one decode may add, since the sequence hands them
 * to the cache after every chunk and decode step that made one (persistSnapshots).
 */
export function snapshotsHeld(model: LoadedModel, cache: PrefixCache | undefined): number {
  if (!cache || !model.hasRecurrentState) return 0;
  return Math.ceil(model.prefillChunkTokens / cache.blockTokens) + 1;
}

/**
 * Hands the full blocks a sequence has computed since `fromTokens` to the cache, with the
 * recurrent snapshots that end them, and drops the sequence's snapshots up to there: a model with
 * recurrent layers keeps one state per block boundary, which would otherwise pile up over a long
 * prompt (qwen3.5-0.8b: about 19 MB each). Returns the tokens handed over so far.
 */
export function persistSnapshots(
  cache: PrefixCache,
  tenant: string,
  tokens: readonly number[],
  kv: ModelCache,
  fromTokens: number,
): number {
  if (kv.snapshotCount === 0) return fromTokens;
  const end = Math.floor(kv.offset / cache.blockTokens) * cache.blockTokens;
  if (end > fromTokens) cache.persist(tenant, tokens, kv, { partialTail: false, fromTokens, keepPace: true });
  kv.dropSnapshots(kv.offset);
  return Math.max(end, fromTokens);
}

/** The engine's kept sequence, which a new sequence may take over (see ResidentSequence). */
export interface Residents {
  /**
   * The kept sequence's KV when it belongs to `tenant` and holds more than `atLeast` leading tokens
   * of `prompt` (at least one, never the prompt's last): trimmed to them and reserved for
   * `reserveTokens`. The KV is the caller's from then on.
   */
  take(
    tenant: string,
    prompt: readonly number[],
    atLeast: number,
    reserveTokens: number,
  ): { kv: ModelCache; tokens: number } | undefined;
}

/**
 * One request's generation, advanced by the engine's scheduler: `begin` looks the prompt up in the
 * prefix cache and restores what it can, prefill chunks compute the rest of the prompt and sample the
 * first token, and decode steps (run batched with other sequences by the engine) give the others. The
 * last step hands the sequence's KV (prompt and generated tokens) to the cache.
 */
export class Sequence implements Job {
  readonly id: number;
  readonly tenant: string;
  readonly memoryBytes: number;
  /** Allocated when the sequence begins, not while it waits for admission. */
  private kv!: ModelCache;
  /** The prefix cache, or undefined when there is none. */
  private readonly cache: PrefixCache | undefined;
  private readonly reserveTokens: number;
  private readonly sampler: Sampler;
  private readonly detokenizer: IncrementalDetokenizer;
  private readonly stops: StopStringFilter;
  private readonly abortController = new AbortController();
  /** The structured-output constraint, compiled when the request starts. */
  private constraint?: Constraint;
  private prefilled = 0;
  chunkTokensDone = 0;
  private readonly generated: number[] = [];
  private started = false;
  private report: CacheReport;
  private lookupMs = 0;
  private restoreMs = 0;
  private prefillMs = 0;
  private startedAt = 0;
  private lookupEndAt = 0;
  private restoreEndAt = 0;
  private firstTokenAt = 0;
  /** When the prefill began, then when progress was last reported (performance.now()). */
  private progressAt = 0;
  private readonly activity: CacheActivity = {
    blocksRestored: 0,
    ssdBytes: 0,
    decision: "none",
    estimatedRestoreMs: 0,
    estimatedRecomputeMs: 0,
    blocksQueued: 0,
    restoreStages: { ramMs: 0, ssdReadWaitMs: 0, verifyMs: 0, stageMs: 0, importMs: 0, sharedReadWaitMs: 0 },
    restoreBatches: [],
  };

  /** The KV and its tokens once the sequence finished and stored them, null once it finished without storing (see takeKept). */
  private kept: { tokens: number[]; kv: ModelCache } | null | undefined;

  constructor(
    private readonly req: GenerateMsg,
    private readonly model: LoadedModel,
    private readonly tokenizer: ModelTokenizer,
    private readonly info: ModelInfo,
    cache: PrefixCache | undefined,
    private readonly send: (msg: FromEngine) => void,
    private readonly residents?: Residents,
  ) {
    this.cache = cache;
    this.id = req.id;
    this.tenant = req.tenant;
    this.reserveTokens = Math.min(req.tokens.length + req.sampling.maxTokens, info.contextTokens);
    this.memoryBytes = kvBytes(info, this.reserveTokens, req.persist ? snapshotsHeld(model, cache) : 0);
    const { temperature, topP, topK, seed } = req.sampling;
    this.sampler = new Sampler({ temperature, topP, topK, seed, vocabLimit: tokenizer.vocabSize });
    // Tool-call and reasoning markers stay in the text when the front end parses them out of it.
    const markers = req.keepOutputMarkers ? outputMarkers(tokenizer.toolCallFormat, tokenizer.reasoning) : [];
    this.detokenizer = new IncrementalDetokenizer(tokenizer, {
      skipSpecialTokens: true,
      keepSpecialIds: tokenizer.specialIdsOf(markers),
    });
    this.stops = new StopStringFilter(req.sampling.stop);
    const n = req.tokens.length;
    this.report = {
      ramTokens: 0,
      ssdTokens: 0,
      sharedTokens: 0,
      recomputedTokens: n,
      recomputeChosenTokens: 0,
      corruptBlocks: 0,
      divergedTokens: 0,
    };
  }

  /**
   * The finished sequence's KV and the tokens it holds, once: what it handed to the cache, for the
   * engine to keep for a next request that continues it. Null for a sequence that finished without
   * storing (persist=false); undefined for one that failed or was cancelled, or without a cache.
   */
  takeKept(): { tokens: number[]; kv: ModelCache } | null | undefined {
    const kept = this.kept;
    this.kept = undefined;
    return kept;
  }

  /** The restore in flight, if any; see Job.waiting. */
  waiting?: Promise<unknown>;
  private restoreError: unknown;

  get need(): JobNeed {
    if (!this.started) return "start";
    return this.prefilled < this.req.tokens.length ? "prefill" : "decode";
  }

  /** The sequence's KV, for a batched decode step. */
  get kvCache(): ModelCache {
    return this.kv;
  }

  begin(): void {
    this.started = true;
    this.kv = this.model.newCache(this.reserveTokens);
    // Recurrent layers keep their state at block boundaries only for a sequence that will persist.
    if (this.cache && this.req.persist) this.kv.captureSnapshots(this.cache.blockTokens);
    // The restore runs while other requests keep computing: its disk reads happen on the store's
    // threads, and its MLX work interleaves with other jobs' steps on this thread.
    this.waiting = this.start().then(
      () => (this.waiting = undefined),
      (err) => {
        this.restoreError = err;
        this.waiting = undefined;
      },
    );
  }

  async prefillChunk(chunkTokens: number): Promise<boolean> {
    if (this.restoreError !== undefined) throw this.restoreError;
    const prompt = this.req.tokens;
    const t0 = performance.now();
    const chunk = prompt.slice(this.prefilled, this.prefilled + chunkTokens);
    const logits = this.model.forward(chunk, this.kv);
    this.prefilled += chunk.length;
    this.chunkTokensDone = chunk.length;
    if (this.prefilled < prompt.length) {
      this.model.materialize(this.kv);
      this.handOverSnapshots();
      this.prefillMs += performance.now() - t0;
      this.reportProgress(t0);
      return false;
    }
    const token = await this.pick(logits);
    this.prefillMs += performance.now() - t0;
    this.cache?.observePrefill(this.report.recomputedTokens, this.prefillMs);
    this.firstTokenAt = now();
    return token === undefined ? this.finish("eos", []) : this.accept(token);
  }

  /**
   * The token this sequence feeds to the next decode step, or undefined when it has finished without
   * one (a complete grammar: only EOS could follow, so no forward pass is needed).
   */
  async decodeInput(): Promise<number | undefined> {
    if (this.constraint && (await this.constraint.next())) {
      this.finish("eos", []);
      return undefined;
    }
    return this.generated[this.generated.length - 1];
  }

  /** Samples from this sequence's row of a decode step's logits; resolves true when it has finished. */
  async acceptLogits(logits: mx.array): Promise<boolean> {
    const token = await this.pick(logits);
    this.handOverSnapshots();
    return token === undefined ? this.finish("eos", []) : this.accept(token);
  }

  /** Tokens whose full blocks the sequence has already handed to the cache (persistSnapshots). */
  private snapshotsPersisted = 0;

  /** Hands blocks ending in recurrent snapshots to the cache as they are made; see persistSnapshots. */
  private handOverSnapshots(): void {
    if (!this.cache || this.kv.snapshotCount === 0) return;
    const tokens = [...this.req.tokens, ...this.generated];
    this.snapshotsPersisted = persistSnapshots(
      this.cache,
      this.tenant,
      tokens,
      this.kv,
      this.snapshotsPersisted,
    );
  }

  /** Samples the next token, under a constraint among the tokens it allows; undefined once it is complete. */
  private async pick(logits: mx.array): Promise<number | undefined> {
    if (!this.constraint) return this.sampler.sample(logits);
    if (await this.constraint.next()) return undefined;
    return this.sampler.sample(this.constraint.mask(logits));
  }

  /** Reports a long prefill's progress between its chunks, at most every PROGRESS_INTERVAL_MS. */
  private reportProgress(chunkStart: number): void {
    const t = performance.now();
    this.progressAt ||= chunkStart;
    if (t - this.progressAt < PROGRESS_INTERVAL_MS) return;
    this.progressAt = t;
    const total = this.req.tokens.length;
    this.send({ type: "progress", id: this.id, promptTokensDone: this.prefilled, promptTokensTotal: total });
  }

  /** Looks the prompt up and restores its cached prefix; at least one token is always computed. */
  private async start(): Promise<void> {
    this.startedAt = now();
    const spec = this.req.sampling.constraint;
    if (spec) {
      // Before the cache is touched: a schema that cannot be compiled fails the request alone.
      const { dir, vocabSize } = this.info;
      this.constraint = await ConstraintCompiler.forModel(dir, vocabSize, this.tokenizer.eosIds).open(spec);
    }
    const prompt = this.req.tokens;
    if (this.cache) {
      // RAM and SSD, then the shared tier where they end (bounded by its timeout; without one, or
      // when Redis is slow or down, this is the local lookup).
      const match = await this.cache.lookupShared(this.req.tenant, prompt, { tokensMax: prompt.length - 1 });
      this.lookupMs = match.lookupMs;
      this.lookupEndAt = now();
      this.report.divergedTokens = match.divergedTokens;
      // The engine's last sequence, when it holds at least as much of this prompt as the cache:
      // its buffers are taken over as they are, with no copy.
      const adopted = this.residents?.take(this.req.tenant, prompt, match.tokens, this.reserveTokens);
      if (adopted) {
        // Nothing is restored: no restore phase (and no restore span), only the tokens reused.
        this.kv = adopted.kv;
        this.prefilled = adopted.tokens;
        this.activity.decision = "resident";
        this.report = {
          ...this.report,
          ramTokens: adopted.tokens,
          recomputedTokens: prompt.length - adopted.tokens,
        };
      } else if (match.tokens > 0) {
        const r = await this.cache.restore(match, this.kv, { signal: this.abortController.signal });
        this.restoreEndAt = now();
        this.restoreMs = r.restoreMs;
        Object.assign(this.activity, {
          blocksRestored: match.blocks.length,
          ssdBytes: r.ssdBytes,
          decision: r.recomputeChosenTokens > 0 ? "recompute" : "restore",
          estimatedRestoreMs: r.estimatedRestoreMs,
          estimatedRecomputeMs: r.estimatedRecomputeMs,
          restoreStages: { ...r.stages },
          restoreBatches: r.batches.map(({ startMs, endMs, ...b }) => ({
            ...b,
            startAt: performance.timeOrigin + startMs,
            endAt: performance.timeOrigin + endMs,
          })),
        });
        this.prefilled = r.restoredTokens;
        this.report = {
          ramTokens: r.ramTokens,
          ssdTokens: r.ssdTokens,
          sharedTokens: r.sharedTokens,
          recomputedTokens: prompt.length - r.restoredTokens,
          recomputeChosenTokens: r.recomputeChosenTokens,
          corruptBlocks: r.corruptBlocks,
          divergedTokens: match.divergedTokens,
        };
      }
    }
    this.send({ type: "started", id: this.id, promptTokens: prompt.length, cache: this.report });
  }

  private accept(token: number): boolean {
    if (this.tokenizer.eosIds.has(token)) return this.finish("eos", []);
    this.constraint?.accept(token);
    this.generated.push(token);
    const { text, stopped } = this.stops.push(this.detokenizer.push(token));
    if (stopped) return this.finish("stop_string", [token], text);
    if (this.generated.length >= this.req.sampling.maxTokens) return this.finish("max_tokens", [token], text);
    if (this.req.tokens.length + this.generated.length >= this.info.contextTokens) {
      return this.finish("context_limit", [token], text);
    }
    this.send({ type: "delta", id: this.id, tokenIds: [token], text });
    return false;
  }

  private finish(reason: FinishReason, lastIds: number[], text = ""): boolean {
    this.constraint?.dispose();
    const tail =
      reason === "stop_string"
        ? text
        : text + this.stops.push(this.detokenizer.flush()).text + this.stops.flush();
    if (lastIds.length || tail) this.send({ type: "delta", id: this.id, tokenIds: lastIds, text: tail });
    this.keep();
    const end = now();
    const completion = this.generated.length;
    const decodeMs = end - (this.firstTokenAt || end);
    const cachedTokens = this.report.ramTokens + this.report.ssdTokens + this.report.sharedTokens;
    this.send({
      type: "finished",
      id: this.id,
      reason,
      usage: { promptTokens: this.req.tokens.length, completionTokens: completion, cachedTokens },
      timings: {
        ttftMs: (this.firstTokenAt || end) - this.req.arrivedAt,
        lookupMs: this.lookupMs,
        restoreMs: this.restoreMs,
        prefillMs: this.prefillMs,
        decodeTokensPerSecond: completion > 1 && decodeMs > 0 ? ((completion - 1) * 1000) / decodeMs : 0,
        totalMs: end - this.req.arrivedAt,
        queueMs: this.startedAt - this.req.arrivedAt,
      },
      phases: {
        arrivedAt: this.req.arrivedAt,
        startedAt: this.startedAt,
        lookupEndAt: this.lookupEndAt,
        restoreEndAt: this.restoreEndAt,
        firstTokenAt: this.firstTokenAt,
        endAt: end,
      },
      activity: this.activity,
    });
    return true;
  }

  /**
   * Hands the KV of prompt and answer to the cache, so the next turn of a conversation, which carries
   * this answer in its history, reuses it. With persist=false nothing new is stored.
   */
  private keep(): void {
    if (!this.cache) return;
    const tokens = [...this.req.tokens, ...this.generated];
    const r = this.cache.persist(this.req.tenant, tokens, this.kv, {
      persist: this.req.persist,
      fromTokens: this.snapshotsPersisted,
    });
    this.kept = this.req.persist ? { tokens: tokens.slice(0, this.kv.offset), kv: this.kv } : null;
    this.activity.blocksQueued = r.queuedToSsd;
    if (this.req.pin && this.req.persist) {
      const { kind, ttlMs } = this.req.pin;
      try {
        this.cache.pin(
          this.req.tenant,
          { tokens: this.req.tokens },
          kind === "hard" ? { kind } : { kind, ttlMs },
        );
      } catch {
        // A pin over the tenant's quota does not fail a request that already succeeded; the pin is
        // simply not taken (Pin reports the quota to callers that need to know).
      }
    }
  }

  abort(): void {
    this.abortController.abort();
    this.constraint?.dispose();
  }
}

/**
 * Runs one sequence to its end by itself, as the engine would with nothing else running: for tools
 * that time a request's own path (the benchmark).
 */
export async function runAlone(seq: Sequence, model: LoadedModel, chunkTokens: number): Promise<void> {
  seq.begin();
  for (;;) {
    if (seq.waiting) await seq.waiting;
    if (seq.need === "prefill") {
      if (await seq.prefillChunk(chunkTokens)) return;
      continue;
    }
    const token = await seq.decodeInput();
    if (token === undefined) return;
    if (await seq.acceptLogits(model.decodeBatch([token], [seq.kvCache]))) return;
  }
}
