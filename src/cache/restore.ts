import { core as mx } from "@frost-beta/mlx";
import type { LayerKV, LayerRows } from "../model/kv-cache";
import {
  LayerFileSink,
  ReadArenas,
  stagesWhole,
  type BatchSink,
  type VerifiedBlock as Verified,
} from "./layer-sink";
import { BlockBatchSink, stageSnapshot, type Ending } from "./batch-sink";
import { blockDataBytes, hasRecurrentLayers, isRecurrentLayer, isSlidingLayer } from "./block-codec";
import { RestoreCosts } from "./restore-cost";
import { byteBatches, slidingKeepFrom, stepTier, type PlanStep } from "./restore-plan";
import { checkSharedBatch } from "./shared-verify";
import { BlockError } from "./errors";
import { CachePart, type CacheParts } from "./parts";
import type { CacheStats, MatchTier, PrefixMatch, RestoreReport, SequenceKV } from "./reports";

const now = () => performance.now();

/** A block read from SSD or Redis that passed its checks, with its step of the plan. */
type VerifiedBlock = Verified<PlanStep>;

/**
 * Restore: the matched blocks into a sequence, RAM runs concatenated and SSD runs staged in
 * batches, with the cost model (RestoreCosts) that chooses recomputing an SSD part when that is
 * faster, fed the rates restores and prefills measure.
 */
export class Restorer extends CachePart {
  /** Tokens left to recompute because that was estimated faster, since open. */
  recomputeChosenTokens = 0;
  private readonly arenas: ReadArenas;
  private readonly costs: RestoreCosts;

  constructor(parts: CacheParts) {
    super(parts);
    this.costs = new RestoreCosts(this.options);
    this.arenas = new ReadArenas(this.options.restoreBatchBytesMax);
  }

  /**
   * Puts the matched KV into a fresh sequence (offset 0) and returns what it did. RAM blocks are
   * referenced for the duration, so nothing evicts them mid-restore. Runs of RAM blocks are
   * concatenated per layer and imported at once; runs of SSD blocks are read in batches of
   * restoreBatchBytesMax, the next batch's read in flight while the current one is verified,
   * staged and loaded. A block that vanished or fails verification ends the restore there: the
   * sequence holds the valid prefix and the rest is left to prefill. With the cost model on,
   * the SSD part is skipped when recomputing it is estimated to be faster.
   */
  async restore(
    match: PrefixMatch,
    kv: SequenceKV,
    options: { signal?: AbortSignal } = {},
  ): Promise<RestoreReport> {
    if (kv.offset !== 0)
      throw new RangeError(`restore needs an empty sequence, this one holds ${kv.offset} tokens`);
    const t0 = now();
    const report: RestoreReport = {
      restoredTokens: 0,
      ramTokens: 0,
      ssdTokens: 0,
      sharedTokens: 0,
      sharedBytes: 0,
      recomputeChosenTokens: 0,
      corruptBlocks: 0,
      lostTokens: 0,
      midBlockTokens: 0,
      ssdBytes: 0,
      restoreMs: 0,
      stages: { ramMs: 0, ssdReadWaitMs: 0, verifyMs: 0, stageMs: 0, importMs: 0, sharedReadWaitMs: 0 },
      batches: [],
      estimatedRestoreMs: 0,
      estimatedRecomputeMs: 0,
    };
    let plan = this.planRestore(match);
    const last = plan[plan.length - 1];
    if (last && this.recurrent && last.block.tokens < last.block.blockTokens) {
      // A recurrent layer's state exists only after a block's last token: restore up to the end
      // of the previous block and recompute the rest, rather than reject the match whole.
      report.midBlockTokens = last.block.tokens;
      if (last.ram) this.ram.release(last.ram);
      plan = plan.slice(0, -1);
    }
    report.lostTokens = match.tokens - report.midBlockTokens - plan.reduce((n, s) => n + s.block.tokens, 0);
    /**
     * The recurrent snapshot of the last block imported, set where the sequence ends: its layers
     * when they are MLX arrays (a RAM block), or the block read from SSD or Redis, whose snapshot is
     * staged only once the restore knows it ends there.
     */
    const ending: Ending = { layers: null, block: null };
    try {
      const cut = this.chooseCut(plan, report);
      if (cut < plan.length) {
        const dropped = plan.slice(cut);
        report.recomputeChosenTokens = dropped.reduce((n, s) => n + s.block.tokens, 0);
        this.recomputeChosenTokens += report.recomputeChosenTokens;
        for (const step of dropped) if (step.ram) this.ram.release(step.ram);
        plan = plan.slice(0, cut);
      }
      const keepFrom = slidingKeepFrom(this.model, plan);
      let at = 0;
      for (let i = 0; i < plan.length;) {
        const tier = stepTier(plan[i]);
        let j = i;
        while (j < plan.length && stepTier(plan[j]) === tier) j++;
        const run = plan.slice(i, j);
        if (tier === "ram") {
          at += this.importRam(run, kv, at, report, keepFrom);
          ending.layers = run[run.length - 1].ram!.layers;
          ending.block = null;
        } else {
          const done =
            tier === "ssd"
              ? await this.importSsd(run, kv, at, report, options.signal, ending, keepFrom)
              : await this.importShared(run, kv, at, report, match.tenant, options.signal, ending, keepFrom);
          at += done.tokens;
          if (done.stopped) {
            report.lostTokens += plan.slice(i).reduce((n, s) => n + s.block.tokens, 0) - done.tokens;
            break;
          }
        }
        i = j;
      }
      if (this.recurrent && at > 0)
        kv.importRecurrent(
          ending.layers ??
            stageSnapshot(this.staging, this.model, ending.block!, report, (bytes) => {
              this.droppedBytes += bytes;
            }),
        );
      report.restoredTokens = at;
    } finally {
      // Release in reverse so the chain's first blocks end up most recently used: under
      // pressure a chain is evicted from its tail, which keeps the rest reachable.
      for (const step of [...plan].reverse()) {
        if (step.ram) {
          this.ram.release(step.ram);
          this.ram.touch(step.entry!.keyHex);
        }
      }
    }
    report.restoreMs = now() - t0;
    return report;
  }

  /** Whether the model has recurrent layers, whose state a restore sets from the last block. */
  private get recurrent(): boolean {
    return hasRecurrentLayers(this.model);
  }

  /** The blocks of a match still available, RAM ones referenced; stops at the first that is gone. */
  private planRestore(match: PrefixMatch): PlanStep[] {
    const plan: PlanStep[] = [];
    const nowMs = this.nowMs();
    for (const block of match.blocks) {
      if (block.tier === "shared") {
        if (!this.shared) break;
        plan.push({ block, entry: null, ram: null });
        continue;
      }
      const entry = this.index.get(block.key.toString("hex"));
      if (!entry) break;
      const ram = this.ram.acquire(entry.keyHex) ?? null;
      if (!ram && this.index.tierOf(entry) !== "ssd") break;
      entry.usedAtMs = nowMs;
      plan.push({ block, entry, ram });
    }
    return plan;
  }

  /**
   * Where to cut the plan: at its first SSD or shared block when recomputing from there is estimated to
   * be faster than restoring the rest, else nowhere (plan.length).
   */
  private chooseCut(plan: PlanStep[], report: RestoreReport): number {
    const first = plan.findIndex((s) => !s.ram);
    if (first < 0) return plan.length;
    const bytes: Record<MatchTier, number> = { ram: 0, ssd: 0, shared: 0 };
    let tokens = 0;
    for (const step of plan.slice(first)) {
      bytes[stepTier(step)] += blockDataBytes(this.model, step.block.tokens);
      tokens += step.block.tokens;
    }
    report.estimatedRestoreMs = this.costs.restoreMs(bytes);
    report.estimatedRecomputeMs = this.costs.recomputeMs(tokens);
    if (!this.options.costModel) return plan.length;
    return report.estimatedRecomputeMs < report.estimatedRestoreMs ? first : plan.length;
  }

  private importRam(
    run: PlanStep[],
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
    keepFrom: (end: number) => number,
  ): number {
    const t0 = now();
    const tokens = run.reduce((n, s) => n + s.block.tokens, 0);
    const end = at + tokens;
    const part = (a: mx.array, from: number, used: number): mx.array =>
      from === 0 && used === a.shape[2]
        ? a
        : a.index(mx.Slice(), mx.Slice(), mx.Slice(from, used), mx.Slice());
    // Each layer's blocks go to the cache as pieces of one import, which joins them in one pass
    // (KVCache.importRange); an import per block was slower (README: 157-185 ms against 313-800
    // ms for 8k tokens of the Qwen2.5-0.5B shape).
    const ranges: (LayerRows | null)[] = [];
    let rows = 0;
    for (let i = 0; i < this.model.numLayers; i++) {
      if (isRecurrentLayer(this.model, i)) {
        ranges.push(null);
        continue;
      }
      // A sliding-window layer takes only the rows a query after the restore can see.
      const from = isSlidingLayer(this.model, i) ? keepFrom(end) : -Infinity;
      const keys: mx.array[] = [];
      const values: mx.array[] = [];
      let start = at;
      for (const step of run) {
        const skip = Math.max(0, Math.min(step.block.tokens, from - start));
        const layer = step.ram!.layers[i] as LayerKV;
        if (skip < step.block.tokens) {
          keys.push(part(layer.keys, skip, step.block.tokens));
          values.push(part(layer.values, skip, step.block.tokens));
          rows += step.block.tokens - skip;
        }
        start += step.block.tokens;
      }
      ranges.push(keys.length === 0 ? null : { keys, values });
    }
    kv.import(at, ranges, end);
    const bytes = rows * 2 * this.model.kvHeads * this.model.headDim * 4;
    if (run.length > 1) this.droppedBytes += bytes;
    const t1 = now();
    const ms = t1 - t0;
    report.stages.ramMs += ms;
    report.ramTokens += tokens;
    report.batches.push({ tier: "ram", blocks: run.length, tokens, bytes, startMs: t0, endMs: t1 });
    this.costs.observeRestore("ram", bytes, ms);
    return tokens;
  }

  private async importSsd(
    run: PlanStep[],
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
    signal: AbortSignal | undefined,
    ending: Ending,
    keepFrom: (end: number) => number,
  ): Promise<{ tokens: number; stopped: boolean }> {
    const ssd = this.ssd!;
    const t0 = now();
    const done = { tokens: 0, bytes: 0 };
    try {
      return await this.importBatches(
        {
          tier: "ssd",
          waitStage: "ssdReadWaitMs",
          batches: byteBatches(
            run,
            (step) => blockDataBytes(this.model, step.block.tokens),
            this.options.restoreBatchBytesMax,
          ),
          // The store's threads fetch the next batch while this one is loaded.
          read: (batch, arena) => {
            const keys = batch.map((s) => s.entry!.key);
            return arena ? ssd.getManyInto(keys, arena) : ssd.getMany(keys);
          },
          check: async (batch, results) => {
            const valid: VerifiedBlock[] = [];
            for (let j = 0; j < batch.length; j++) {
              const checked = this.payloads.checkStored(batch[j].entry!, results[j]);
              if (checked instanceof BlockError) {
                if (await this.index.onStoredFailure(batch[j].entry!, checked)) report.corruptBlocks++;
                return { valid, failed: true };
              }
              valid.push({ step: batch[j], block: checked });
            }
            return { valid, failed: false };
          },
        },
        done,
        kv,
        at,
        report,
        signal,
        ending,
        keepFrom,
      );
    } finally {
      report.ssdTokens += done.tokens;
      report.ssdBytes += done.bytes;
      if (done.bytes > 0) this.costs.observeRestore("ssd", done.bytes, now() - t0);
    }
  }

  /**
   * Restores a run of shared-tier blocks: batches of the tier's restoreBatchBytesMax, the next
   * batch's GETs in flight while this one is verified and loaded, each batch's reads bounded by the
   * tier's timeout. Every value is verified as PutBlocks verifies a block, and must be the block
   * the lookup named (key, parent, tokens) under this tenant's root; a value that fails is
   * refused, counted, deleted from Redis and ends the restore there, as do a value gone since the
   * lookup, an error and a timeout. The rest is prefilled.
   */
  private async importShared(
    run: PlanStep[],
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
    tenant: string,
    signal: AbortSignal | undefined,
    ending: Ending,
    keepFrom: (end: number) => number,
  ): Promise<{ tokens: number; stopped: boolean }> {
    const shared = this.shared!;
    const root = this.index.rootOf(tenant);
    const t0 = now();
    const done = { tokens: 0, bytes: 0 };
    try {
      return await this.importBatches(
        {
          tier: "shared",
          waitStage: "sharedReadWaitMs",
          batches: byteBatches(
            run,
            (step) => blockDataBytes(this.model, step.block.blockTokens),
            shared.options.restoreBatchBytesMax,
          ),
          read: (batch) =>
            shared.read(
              batch.map((s) => s.block.key),
              now() + shared.options.timeoutMs,
            ),
          check: (batch, values) =>
            checkSharedBatch(
              shared,
              batch,
              values,
              root,
              this.model,
              this.options.blockTokens,
              report,
              () => {
                this.index.corruptBlocks++;
              },
            ),
          loaded: (valid) => {
            for (const { step } of valid) shared.noteRestored(step.block.key.toString("hex"));
          },
        },
        done,
        kv,
        at,
        report,
        signal,
        ending,
        keepFrom,
      );
    } finally {
      report.sharedTokens += done.tokens;
      if (done.bytes > 0) this.costs.observeRestore("shared", done.bytes, now() - t0);
    }
  }

  /**
   * The SSD and shared tiers' restore loop: each batch is read (the next batch's read in flight
   * while this one is checked and loaded), checked up to its first failing block, and its valid
   * blocks loaded; a failing block ends the restore there. `done` counts the tokens and bytes
   * loaded as they are, also when the restore is aborted midway.
   */
  private async importBatches<R>(
    o: {
      tier: "ssd" | "shared";
      waitStage: "ssdReadWaitMs" | "sharedReadWaitMs";
      batches: PlanStep[][];
      /** Reads a batch, into `arena` when given (views valid until the arena is read into again). */
      read: (batch: PlanStep[], arena?: Buffer) => Promise<R[]>;
      check: (batch: PlanStep[], results: R[]) => Promise<{ valid: VerifiedBlock[]; failed: boolean }>;
      loaded?: (valid: VerifiedBlock[]) => void;
    },
    done: { tokens: number; bytes: number },
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
    signal: AbortSignal | undefined,
    ending: Ending,
    keepFrom: (end: number) => number,
  ): Promise<{ tokens: number; stopped: boolean }> {
    const tokens = o.batches.flat().reduce((n, s) => n + s.block.tokens, 0);
    const whole = LayerFileSink.open(this.staging, this.model, kv, at, tokens, report);
    const sink: BatchSink<VerifiedBlock> =
      whole ??
      new BlockBatchSink(this.staging, this.model, kv, report, ending, keepFrom, (bytes) => {
        this.droppedBytes += bytes;
      });
    // SSD batches staged whole are read into two arenas in turn (ReadArenas); the batch path keeps
    // block bytes past their batch (a recurrent snapshot's), so it reads into Buffers of their own.
    const arenas = whole && o.tier === "ssd" ? this.arenas.take() : null;
    const read = async (b: number): Promise<R[]> => {
      if (!arenas) return o.read(o.batches[b]);
      if (b >= 2) await whole!.settled();
      return o.read(o.batches[b], arenas[b % 2]);
    };
    let pending = read(0);
    let finished = false;
    try {
      for (let b = 0; b < o.batches.length; b++) {
        const tWait = now();
        const results = await pending;
        report.stages[o.waitStage] += now() - tWait;
        if (b + 1 < o.batches.length) pending = read(b + 1);
        signal?.throwIfAborted();
        const tVerify = now();
        const { valid, failed } = await o.check(o.batches[b], results);
        report.stages.verifyMs += now() - tVerify;
        if (valid.length > 0) {
          const loaded = sink.add(valid, at + done.tokens);
          done.tokens += loaded.tokens;
          done.bytes += loaded.bytes;
          o.loaded?.(valid);
          report.batches.push({
            tier: o.tier,
            blocks: valid.length,
            tokens: loaded.tokens,
            bytes: loaded.bytes,
            startMs: tWait,
            endMs: now(),
          });
        }
        if (failed) break;
      }
      finished = true;
      // A whole-layer file that could not be written (a full tmpfs) holds nothing: recomputed.
      const held = (await sink.finish(true, at + done.tokens)) - at;
      if (held < done.tokens) {
        this.log(
          `restore: the layer file on ${this.options.stagingDir} could not be written (${whole?.failure?.message}); ${done.tokens} tokens are recomputed`,
        );
        done.tokens = done.bytes = 0;
      }
      return { tokens: done.tokens, stopped: done.tokens < tokens };
    } finally {
      // A read still in flight after an early stop must not surface as an unhandled rejection.
      pending.catch(() => {});
      // Aborted or failed: no write into the file may still run when the next restore uses it.
      if (!finished) await sink.finish(false, at + done.tokens);
      // Nor a read into the arenas.
      if (arenas)
        await pending.then(
          () => this.arenas.release(),
          () => this.arenas.release(),
        );
    }
  }

  /** Allocates and faults in the SSD restores' read arenas ahead of the first (ReadArenas.prepare). */
  prepareArenas(): void {
    if (this.heldBytes > 0) this.arenas.prepare();
  }

  /**
   * Bytes of memory SSD restores keep between them: their read arenas, which only runs staged
   * whole read into; 0 without an SSD tier or for a model whose runs go batch by batch.
   */
  get heldBytes(): number {
    return this.ssd && stagesWhole(this.model) ? this.arenas.bytes : 0;
  }

  /** Feeds the cost model a measured prefill: `tokens` computed in `ms`. */
  observePrefill(tokens: number, ms: number): void {
    this.costs.observePrefill(tokens, ms);
  }

  /** The rates the cost model uses, per second. */
  rates(): CacheStats["rates"] {
    return this.costs.rates();
  }
}
