import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { KvparkError } from "../errors";
import type { LayerKV, ModelCache } from "../model/kv-cache";
import type { PutResult } from "../store";
import {
  blockDataBytes,
  blockTensor,
  encodePayloadHeader,
  headRows,
  makeHeader,
  openEnvelope,
  parseBlockPayload,
  storedEnvelope,
  toRecord,
  verifyRecord,
  asBuffer,
  normalizeRecord,
  type KVBlockInput,
  type KVBlockRecord,
  type ModelShape,
  type ParsedBlock,
} from "./block-codec";
import { BLOCK_KEY_BYTES, blockKey, chainKeys, rootKey } from "./block-key";
import type { ChainRecord } from "./chain-log";
import { resolveCacheOptions, type CacheOptions } from "./config";
import { BlockError, type BlockErrorCode } from "./errors";
import { RamTier, type RamBlock } from "./ram-tier";
import { encodeHeader, type TensorSpec } from "./safetensors";
import { SsdTier, type PendingWrite } from "./ssd-tier";
import { Staging, removeStaleStagingDirs } from "./staging";

/** The part of a sequence's ModelCache the prefix cache reads (persist) and writes (restore). */
export type SequenceKV = Pick<ModelCache, "offset" | "export" | "import">;

/** Where a cached block is served from. */
export type Tier = "ram" | "ssd";

/** One block of a prefix match. */
export interface MatchedBlock {
  key: Buffer;
  /** Index in the prompt of the block's first token. */
  start: number;
  /** Tokens of the block the match uses: all of them, or the leading ones where the prompt diverges or ends. */
  tokens: number;
  /** Tokens the block holds. */
  blockTokens: number;
  /** The fastest tier holding it at lookup time. */
  tier: Tier;
}

/** The longest cached prefix of a prompt, found by lookup(). */
export interface PrefixMatch {
  tenant: string;
  promptTokens: number;
  blocks: MatchedBlock[];
  /** Leading prompt tokens covered by the blocks. */
  tokens: number;
  ramTokens: number;
  ssdTokens: number;
  /**
   * Cached tokens that continued where the prompt left the cached sequence (the rest of the block
   * it diverged from, and that block's longest line of descendants): reuse lost because the prompt
   * differs there, for example when a chat template re-renders an earlier answer differently.
   * 0 when the prompt ends inside cached context or nothing was cached past its match.
   */
  divergedTokens: number;
  lookupMs: number;
}

/** Options of lookup(). */
export interface LookupOptions {
  /**
   * Match at most this many tokens. The engine passes promptTokens - 1: the last prompt token
   * must be computed to get the logits the first generated token is sampled from.
   */
  tokensMax?: number;
}

/** Time spent in each stage of a restore. */
export interface RestoreStages {
  /** Concatenating RAM blocks and importing them. */
  ramMs: number;
  /** Waiting for SSD reads that were not hidden behind other work. */
  ssdReadWaitMs: number;
  /** Checking stored blocks (envelope, header, tokens). */
  verifyMs: number;
  /** Writing the staging file and loading it into MLX. */
  stageMs: number;
  /** Importing loaded SSD blocks into the sequence. */
  importMs: number;
}

/** What restore() put into the sequence and what it cost. */
export interface RestoreReport {
  /** Tokens now in the sequence (its offset). */
  restoredTokens: number;
  ramTokens: number;
  ssdTokens: number;
  /** Tokens cached on SSD (and RAM blocks after them) left to recompute because that was estimated faster. */
  recomputeChosenTokens: number;
  /** Blocks that failed verification; the match was cut before the first of them. */
  corruptBlocks: number;
  /** Tokens of the match lost because a block vanished or failed (not counting recomputeChosenTokens). */
  lostTokens: number;
  ssdBytes: number;
  restoreMs: number;
  stages: RestoreStages;
  /** The cost model's estimates for the SSD part, in ms (0 when there was none). */
  estimatedRestoreMs: number;
  estimatedRecomputeMs: number;
  /** Each import into the sequence, in order: a run of RAM blocks, or one batch read from SSD. */
  batches: RestoreBatch[];
}

/** One import of a restore, for tracing; times are performance.now() milliseconds. */
export interface RestoreBatch {
  tier: Tier;
  blocks: number;
  tokens: number;
  bytes: number;
  startMs: number;
  endMs: number;
}

/** Options of persist(). */
export interface PersistOptions {
  /** False: store nothing (the request opted out); cached blocks were still used. Default true. */
  persist?: boolean;
  /** Also store the trailing block shorter than blockTokens. Default true. */
  partialTail?: boolean;
  /** Blocks that ends at or before this many tokens are neither exported nor promoted. Default 0. */
  fromTokens?: number;
}

/** What persist() did. */
export interface PersistReport {
  /** New blocks put into RAM. */
  blocksAdded: number;
  /** Blocks found on SSD only and copied into RAM. */
  blocksPromoted: number;
  /** Blocks already in RAM. */
  blocksPresent: number;
  bytesAdded: number;
  /** Blocks queued for SSD. */
  queuedToSsd: number;
  /** Blocks the SSD queue had no room for (counted in stats as writeSkips). */
  ssdSkips: number;
  /** Blocks the RAM tier could not take (everything evictable referenced or pinned). */
  ramRejects: number;
}

/** A block or the reason it is not served, for GetBlocks. */
export type GetBlockResult =
  | { key: Buffer; block: KVBlockRecord; tier: Tier }
  | { key: Buffer; error: { code: BlockErrorCode; message: string } };

/** A refused block of a putBlocks() call. */
export interface BlockRejection {
  index: number;
  key: Buffer;
  code: BlockErrorCode;
  message: string;
}

/** The outcome of putBlocks(). */
export interface PutBlocksReport {
  accepted: number;
  rejected: BlockRejection[];
}

/** Blocks to pin or unpin: explicit keys, or the cached blocks of a prompt's matched prefix. */
export type BlockSelector = { keys: readonly Uint8Array[] } | { tokens: readonly number[] };

/** Pin kind as the RPC gives it; ttlMs of a soft pin 0 or absent selects the default. */
export type PinRequestKind = { kind: "hard" } | { kind: "soft"; ttlMs?: number };

/** The outcome of pin(). */
export interface PinReport {
  pinnedBlocks: number;
  missingKeys: Buffer[];
  hardPinnedBytes: number;
  hardPinQuotaBytes: number;
}

/** One tier's numbers, shaped like the proto's TierStats. */
export interface TierStats {
  bytes: number;
  bytesMax: number;
  blocks: number;
  hits: number;
  misses: number;
  evictions: number;
  pinnedBlocks: number;
}

/** Everything the Stats RPC and the metrics report. */
export interface CacheStats {
  blockTokens: number;
  modelFingerprint: string;
  ram: TierStats;
  ssd: TierStats;
  writeQueueDepth: number;
  writeQueueBytes: number;
  writeSkips: number;
  writeErrors: number;
  corruptBlocks: number;
  recomputeChosenTokens: number;
  /** Blocks known to the chain index (any tier). */
  indexedBlocks: number;
  /** Where the SSD tier's chain index came from at open ("none" without an SSD tier). */
  ssdIndexSource: "log" | "scan" | "empty" | "none";
  /** Measured rates the cost model uses. */
  rates: {
    ssdRestoreBytesPerSecond: number;
    ramRestoreBytesPerSecond: number;
    prefillTokensPerSecond: number;
  };
}

/** Everything the index knows about one block. */
interface BlockEntry {
  key: Buffer;
  keyHex: string;
  parentHex: string;
  rootHex: string;
  tokenIds: Uint32Array;
  /** Bytes of the block's KV in MLX (float32). */
  bytes: number;
  ssd: "none" | "queued" | "stored";
  /** Times the block was persisted by a request: the "reused" admission policy writes it at 2. */
  sightings: number;
  hardPinned: boolean;
  softPinUntilMs: number;
}

interface PlanStep {
  block: MatchedBlock;
  entry: BlockEntry;
  ram: RamBlock | null;
}

// Exponential moving average weight of a new rate measurement.
const RATE_EWMA_WEIGHT = 0.3;
// RAM restore runs at memory speed (measured ~1.2 GB/s for concatenate + import, README); the
// prior only matters until the first RAM restore is measured.
const RAM_RESTORE_BYTES_PER_SECOND_PRIOR = 1e9;

const now = () => performance.now();

/**
 * The prefix cache: KV blocks of earlier prompts in RAM (MLX arrays) and on SSD (the native
 * store), found by a hash chain from a per-tenant root, and restored into a sequence instead of
 * being recomputed.
 *
 * The engine's thread owns it: every method that touches MLX (restore, persist, getBlocks of
 * RAM blocks, putBlocks without an SSD tier, and the SSD write queue's encoder) runs there.
 */
export class PrefixCache {
  readonly options: CacheOptions;
  private readonly entries = new Map<string, BlockEntry>();
  private readonly children = new Map<string, Map<string, BlockEntry>>();
  private readonly roots = new Map<string, Buffer>();
  private readonly hardPinnedBytes = new Map<string, number>();
  private readonly ram: RamTier;
  private ssd: SsdTier | null = null;
  private readonly staging: Staging;
  private droppedBytes = 0;
  private corruptBlocks = 0;
  private recomputeChosenTokens = 0;
  private readonly counters = { ramHits: 0, ramMisses: 0, ssdHits: 0, ssdMisses: 0 };
  private ssdBytesPerMs: number;
  private ramBytesPerMs = RAM_RESTORE_BYTES_PER_SECOND_PRIOR / 1000;
  private prefillTokensPerMs: number;

  private constructor(
    readonly model: ModelShape,
    options: CacheOptions,
  ) {
    this.options = options;
    this.ram = new RamTier(options.ramBytesMax, (keyHex) => this.onRamDrop(keyHex));
    this.staging = new Staging(options.stagingDir);
    this.ssdBytesPerMs = options.ssdRestoreBytesPerSecondPrior / 1000;
    this.prefillTokensPerMs = options.prefillTokensPerSecondPrior / 1000;
  }

  /**
   * Opens the cache for a model: RAM tier empty, SSD tier (when ssdDir is set) with the chain
   * index of every block it holds, so prompts seen before a restart hit.
   */
  static async open(model: ModelShape, options: Partial<CacheOptions> = {}): Promise<PrefixCache> {
    checkModel(model);
    const resolved = resolveCacheOptions(options);
    if (/^kvpark-\d+$/.test(path.basename(resolved.stagingDir))) {
      removeStaleStagingDirs(path.dirname(resolved.stagingDir));
    }
    const cache = new PrefixCache(model, resolved);
    const o = cache.options;
    if (o.ssdDir !== null) {
      try {
        cache.ssd = await SsdTier.open(
          {
            dir: o.ssdDir,
            bytesMax: o.ssdBytesMax,
            segmentBytes: o.ssdSegmentBytes,
            fsync: o.ssdFsync,
            admission: o.admission,
            writeQueueBlocksMax: o.writeQueueBlocksMax,
            writeQueueBytesMax: o.writeQueueBytesMax,
            writeBatchBytesMax: o.writeBatchBytesMax,
          },
          (items) => cache.encodeForStore(items),
        );
      } catch (err) {
        cache.staging.close();
        throw err;
      }
      for (const record of cache.ssd.records.values()) cache.indexStored(record);
    }
    return cache;
  }

  get blockTokens(): number {
    return this.options.blockTokens;
  }

  // ---- Lookup -----------------------------------------------------------------------------

  /**
   * The longest cached prefix of `tokens` for `tenant`, block by block from the tenant's root:
   * a full block whose tokens all match continues the walk; otherwise the child sharing the most
   * leading tokens with the prompt ends it (a trailing partial block, or a block the prompt
   * diverges from mid-way, of which the matching leading tokens are reused). Synchronous: no
   * I/O, nothing is reserved (restore() re-checks each block).
   */
  lookup(tenant: string, tokens: readonly number[], options: LookupOptions = {}): PrefixMatch {
    const t0 = now();
    const B = this.options.blockTokens;
    const limit = Math.min(tokens.length, Math.max(0, options.tokensMax ?? tokens.length));
    const blocks: MatchedBlock[] = [];
    let parent = this.rootOf(tenant);
    let parentHex = parent.toString("hex");
    let pos = 0;
    let ramTokens = 0;
    let ssdTokens = 0;
    while (pos < limit) {
      const want = Math.min(B, limit - pos);
      let best: BlockEntry | null = null;
      let bestTokens = 0;
      let bestTier: Tier | null = null;
      if (want === B) {
        // The common case, a whole block equal to the prompt's next tokens, without a scan.
        const exact = this.entries.get(
          blockKey(parent, tokens.slice(pos, pos + B), this.model.fingerprint).toString("hex"),
        );
        const tier = exact ? this.tierOf(exact) : null;
        if (exact && tier) {
          best = exact;
          bestTokens = B;
          bestTier = tier;
        }
      }
      if (!best) {
        for (const child of [...(this.children.get(parentHex)?.values() ?? [])]) {
          const shared = sharedPrefix(child.tokenIds, tokens, pos, want);
          if (shared === 0 || shared < bestTokens) continue;
          const tier = this.tierOf(child);
          if (!tier) continue;
          if (shared > bestTokens || (tier === "ram" && bestTier === "ssd")) {
            best = child;
            bestTokens = shared;
            bestTier = tier;
          }
        }
      }
      if (!best || !bestTier) {
        this.counters.ramMisses++;
        this.counters.ssdMisses++;
        break;
      }
      if (bestTier === "ram") {
        this.counters.ramHits++;
        ramTokens += bestTokens;
      } else {
        this.counters.ramMisses++;
        this.counters.ssdHits++;
        ssdTokens += bestTokens;
      }
      blocks.push({
        key: best.key,
        start: pos,
        tokens: bestTokens,
        blockTokens: best.tokenIds.length,
        tier: bestTier,
      });
      pos += bestTokens;
      // Only a full block used whole has children worth following.
      if (bestTokens < best.tokenIds.length || best.tokenIds.length < B) break;
      parent = best.key;
      parentHex = best.keyHex;
    }
    return {
      tenant,
      promptTokens: tokens.length,
      blocks,
      tokens: pos,
      ramTokens,
      ssdTokens,
      // A walk that stopped before the limit stopped at a difference; one stopped by the limit did not.
      divergedTokens: pos < limit ? this.divergedTokens(blocks, parentHex) : 0,
      lookupMs: now() - t0,
    };
  }

  /** See PrefixMatch.divergedTokens; walks at most a bounded number of blocks. */
  private divergedTokens(blocks: MatchedBlock[], parentHex: string): number {
    const last = blocks.at(-1);
    let lost: number;
    let from: BlockEntry | undefined;
    if (last && last.tokens < last.blockTokens) {
      // The prompt left the chain inside this block.
      from = this.entries.get(last.key.toString("hex"));
      lost = last.blockTokens - last.tokens;
    } else {
      // The prompt left the chain at a block boundary: the longest cached continuation is lost.
      from = this.longestChild(parentHex);
      lost = from?.tokenIds.length ?? 0;
    }
    for (let steps = 0; from && steps < 1024; steps++) {
      from = this.longestChild(from.keyHex);
      lost += from?.tokenIds.length ?? 0;
    }
    return lost;
  }

  private longestChild(parentHex: string): BlockEntry | undefined {
    let best: BlockEntry | undefined;
    for (const child of this.children.get(parentHex)?.values() ?? []) {
      if (this.tierOf(child) && (!best || child.tokenIds.length > best.tokenIds.length)) best = child;
    }
    return best;
  }

  // ---- Restore ----------------------------------------------------------------------------

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
      recomputeChosenTokens: 0,
      corruptBlocks: 0,
      lostTokens: 0,
      ssdBytes: 0,
      restoreMs: 0,
      stages: { ramMs: 0, ssdReadWaitMs: 0, verifyMs: 0, stageMs: 0, importMs: 0 },
      batches: [],
      estimatedRestoreMs: 0,
      estimatedRecomputeMs: 0,
    };
    let plan = this.planRestore(match);
    report.lostTokens = match.tokens - plan.reduce((n, s) => n + s.block.tokens, 0);
    try {
      const cut = this.chooseCut(plan, report);
      if (cut < plan.length) {
        const dropped = plan.slice(cut);
        report.recomputeChosenTokens = dropped.reduce((n, s) => n + s.block.tokens, 0);
        this.recomputeChosenTokens += report.recomputeChosenTokens;
        for (const step of dropped) if (step.ram) this.ram.release(step.ram);
        plan = plan.slice(0, cut);
      }
      let at = 0;
      for (let i = 0; i < plan.length;) {
        const tier = plan[i].ram ? "ram" : "ssd";
        let j = i;
        while (j < plan.length && (plan[j].ram ? "ram" : "ssd") === tier) j++;
        const run = plan.slice(i, j);
        if (tier === "ram") {
          at += this.importRam(run, kv, at, report);
        } else {
          const done = await this.importSsd(run, kv, at, report, options.signal);
          at += done.tokens;
          if (done.stopped) {
            report.lostTokens += plan.slice(i).reduce((n, s) => n + s.block.tokens, 0) - done.tokens;
            break;
          }
        }
        i = j;
      }
      report.restoredTokens = at;
    } finally {
      // Release in reverse so the chain's first blocks end up most recently used: under
      // pressure a chain is evicted from its tail, which keeps the rest reachable.
      for (const step of [...plan].reverse()) {
        if (step.ram) {
          this.ram.release(step.ram);
          this.ram.touch(step.entry.keyHex);
        }
      }
    }
    report.restoreMs = now() - t0;
    return report;
  }

  /** The blocks of a match still available, RAM ones referenced; stops at the first that is gone. */
  private planRestore(match: PrefixMatch): PlanStep[] {
    const plan: PlanStep[] = [];
    for (const block of match.blocks) {
      const entry = this.entries.get(block.key.toString("hex"));
      if (!entry) break;
      const ram = this.ram.acquire(entry.keyHex) ?? null;
      if (!ram && this.tierOf(entry) !== "ssd") break;
      plan.push({ block, entry, ram });
    }
    return plan;
  }

  /**
   * Where to cut the plan: at its first SSD block when recomputing from there is estimated to
   * be faster than restoring the rest, else nowhere (plan.length).
   */
  private chooseCut(plan: PlanStep[], report: RestoreReport): number {
    const first = plan.findIndex((s) => !s.ram);
    if (first < 0) return plan.length;
    let ssdBytes = 0;
    let ramBytes = 0;
    let tokens = 0;
    for (const step of plan.slice(first)) {
      const bytes = blockDataBytes(this.model, step.block.tokens);
      if (step.ram) ramBytes += bytes;
      else ssdBytes += bytes;
      tokens += step.block.tokens;
    }
    report.estimatedRestoreMs = ssdBytes / this.ssdBytesPerMs + ramBytes / this.ramBytesPerMs;
    report.estimatedRecomputeMs = tokens / this.prefillTokensPerMs;
    if (!this.options.costModel) return plan.length;
    return report.estimatedRecomputeMs < report.estimatedRestoreMs ? first : plan.length;
  }

  private importRam(run: PlanStep[], kv: SequenceKV, at: number, report: RestoreReport): number {
    const t0 = now();
    const tokens = run.reduce((n, s) => n + s.block.tokens, 0);
    const part = (a: mx.array, used: number): mx.array =>
      used === a.shape[2] ? a : a.index(mx.Slice(), mx.Slice(), mx.Slice(0, used), mx.Slice());
    // One concatenation per layer and one import beat an import per block (README: 157-185 ms
    // against 313-800 ms for 8k tokens of the Qwen2.5-0.5B shape).
    const ranges: LayerKV[] = [];
    for (let i = 0; i < this.model.numLayers; i++) {
      const keys = run.map((s) => part(s.ram!.layers[i].keys, s.block.tokens));
      const values = run.map((s) => part(s.ram!.layers[i].values, s.block.tokens));
      ranges.push({
        keys: keys.length === 1 ? keys[0] : mx.concatenate(keys, 2),
        values: values.length === 1 ? values[0] : mx.concatenate(values, 2),
      });
    }
    kv.import(at, ranges);
    const bytes = blockDataBytes(this.model, tokens);
    if (run.length > 1) this.droppedBytes += bytes;
    const end = now();
    const ms = end - t0;
    report.stages.ramMs += ms;
    report.ramTokens += tokens;
    report.batches.push({ tier: "ram", blocks: run.length, tokens, bytes, startMs: t0, endMs: end });
    this.ramBytesPerMs = ewma(this.ramBytesPerMs, bytes / Math.max(ms, 0.01));
    return tokens;
  }

  private async importSsd(
    run: PlanStep[],
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
    signal: AbortSignal | undefined,
  ): Promise<{ tokens: number; stopped: boolean }> {
    const ssd = this.ssd!;
    const t0 = now();
    const batches: PlanStep[][] = [];
    let bytes = Infinity;
    for (const step of run) {
      const blockBytes = blockDataBytes(this.model, step.block.tokens);
      if (bytes + blockBytes > this.options.restoreBatchBytesMax) {
        batches.push([]);
        bytes = 0;
      }
      batches[batches.length - 1].push(step);
      bytes += blockBytes;
    }
    const read = (batch: PlanStep[]) => ssd.getMany(batch.map((s) => s.entry.key));
    let pending = read(batches[0]);
    let tokens = 0;
    let restoredBytes = 0;
    try {
      for (let b = 0; b < batches.length; b++) {
        const tWait = now();
        const results = await pending;
        report.stages.ssdReadWaitMs += now() - tWait;
        // Start the next read now: the store's threads fetch it while this batch is loaded.
        if (b + 1 < batches.length) pending = read(batches[b + 1]);
        signal?.throwIfAborted();
        const tVerify = now();
        const valid: { step: PlanStep; block: ParsedBlock }[] = [];
        let failed: PlanStep | null = null;
        for (let j = 0; j < batches[b].length; j++) {
          const step = batches[b][j];
          const checked = this.checkStored(step.entry, results[j]);
          if (checked instanceof BlockError) {
            failed = step;
            if (checked.code === "NOT_FOUND") {
              // Evicted by the store's cap since lookup: not damage, just gone.
              ssd.forget(step.entry.keyHex);
              this.dropIfUnheld(step.entry);
            } else {
              report.corruptBlocks++;
              await this.dropCorrupt(step.entry);
            }
            break;
          }
          valid.push({ step, block: checked });
        }
        report.stages.verifyMs += now() - tVerify;
        if (valid.length > 0) {
          const loaded = this.loadBlocks(valid, kv, at + tokens, report);
          tokens += loaded.tokens;
          restoredBytes += loaded.bytes;
          report.batches.push({
            tier: "ssd",
            blocks: valid.length,
            tokens: loaded.tokens,
            bytes: loaded.bytes,
            startMs: tWait,
            endMs: now(),
          });
        }
        if (failed) return { tokens, stopped: true };
      }
      return { tokens, stopped: false };
    } finally {
      // A read still in flight after an early stop must not surface as an unhandled rejection.
      pending.catch(() => {});
      report.ssdTokens += tokens;
      report.ssdBytes += restoredBytes;
      if (restoredBytes > 0)
        this.ssdBytesPerMs = ewma(this.ssdBytesPerMs, restoredBytes / Math.max(now() - t0, 0.01));
    }
  }

  /**
   * Stages verified blocks as one safetensors file whose tensors are whole layers
   * [1, kvHeads, tokens, headDim] (head-major pieces of every block, gathered by writev), loads
   * it and imports every layer with one call. Files of few large tensors load faster than files
   * of many small ones, and one import per layer avoids a concatenation (README).
   */
  private loadBlocks(
    valid: { step: PlanStep; block: ParsedBlock }[],
    kv: SequenceKV,
    at: number,
    report: RestoreReport,
  ): { tokens: number; bytes: number } {
    const { numLayers, kvHeads, headDim } = this.model;
    const tStage = now();
    const tokens = valid.reduce((n, v) => n + v.step.block.tokens, 0);
    const layerBytes = kvHeads * tokens * headDim * 4;
    const specs: TensorSpec[] = [];
    const pieces: Buffer[] = [];
    for (let i = 0; i < numLayers; i++) {
      for (const kind of ["keys", "values"] as const) {
        specs.push({
          name: `${i}.${kind}`,
          dtype: "F32",
          shape: [1, kvHeads, tokens, headDim],
          byteLength: layerBytes,
        });
        for (let h = 0; h < kvHeads; h++) {
          for (const { step, block } of valid) {
            pieces.push(headRows(blockTensor(block, i, kind), block.header.shape, h, step.block.tokens));
          }
        }
      }
    }
    const arrays = this.staging.bytesToArrays(encodeHeader(specs, {}), pieces);
    const tImport = now();
    report.stages.stageMs += tImport - tStage;
    const ranges: LayerKV[] = [];
    for (let i = 0; i < numLayers; i++)
      ranges.push({ keys: arrays[`${i}.keys`], values: arrays[`${i}.values`] });
    kv.import(at, ranges);
    report.stages.importMs += now() - tImport;
    const bytes = layerBytes * 2 * numLayers;
    this.droppedBytes += bytes;
    return { tokens, bytes };
  }

  /** Checks a block read from SSD against what the index says it is. */
  private checkStored(entry: BlockEntry, result: Buffer | string): ParsedBlock | BlockError {
    if (typeof result === "string") {
      return result === "KV_NOT_FOUND"
        ? new BlockError("NOT_FOUND", "block left the SSD tier")
        : new BlockError("CORRUPT", `store read failed: ${result}`);
    }
    try {
      const { root, payload } = openEnvelope(result);
      const block = parseBlockPayload(payload, this.model);
      const h = block.header;
      const parentHex = h.parentKey.length === 0 ? root.toString("hex") : h.parentKey.toString("hex");
      if (
        !h.key.equals(entry.key) ||
        root.toString("hex") !== entry.rootHex ||
        parentHex !== entry.parentHex ||
        !sameTokens(h.tokenIds, entry.tokenIds)
      ) {
        return new BlockError("CORRUPT", "stored block differs from its index entry");
      }
      return block;
    } catch (err) {
      if (err instanceof BlockError) return new BlockError("CORRUPT", `${err.code}: ${err.message}`);
      throw err;
    }
  }

  // ---- Persist ----------------------------------------------------------------------------

  /**
   * Stores the KV of `tokens` (the sequence's tokens; those beyond its offset are ignored):
   * every block not in RAM is exported from the sequence into RAM (new blocks, and blocks
   * restored from SSD, which are promoted), the trailing partial block included, and queued for
   * SSD as the admission policy allows. Call it when a request ends (with prompt and generated
   * tokens) or at checkpoints of a long prefill. Synchronous; the SSD writes happen behind it.
   */
  persist(
    tenant: string,
    tokens: readonly number[],
    kv: SequenceKV,
    options: PersistOptions = {},
  ): PersistReport {
    const report: PersistReport = {
      blocksAdded: 0,
      blocksPromoted: 0,
      blocksPresent: 0,
      bytesAdded: 0,
      queuedToSsd: 0,
      ssdSkips: 0,
      ramRejects: 0,
    };
    if (options.persist === false) return report;
    const B = this.options.blockTokens;
    const n = kv.offset;
    if (tokens.length < n) throw new RangeError(`persist: ${tokens.length} tokens for a sequence of ${n}`);
    const end = options.partialTail === false ? Math.floor(n / B) * B : n;
    const fromTokens = options.fromTokens ?? 0;
    const root = this.rootOf(tenant);
    const rootHex = root.toString("hex");
    const used: string[] = [];
    for (const link of chainKeys(root, tokens, B, this.model.fingerprint, end)) {
      if (link.end <= fromTokens) continue;
      const keyHex = link.key.toString("hex");
      let entry = this.entries.get(keyHex);
      const blockTokens = link.end - link.start;
      const ramBlock = this.ram.get(keyHex);
      if (entry && ramBlock) {
        entry.sightings++;
        report.blocksPresent++;
        used.push(keyHex);
        this.admit(entry, ramBlock.layers, report);
        continue;
      }
      const layers = kv.export(link.start, link.end);
      const bytes = blockDataBytes(this.model, blockTokens);
      const isNew = !entry;
      entry ??= {
        key: link.key,
        keyHex,
        parentHex: link.parent.toString("hex"),
        rootHex,
        tokenIds: Uint32Array.from(tokens.slice(link.start, link.end)),
        bytes,
        ssd: "none",
        sightings: 0,
        hardPinned: false,
        softPinUntilMs: 0,
      };
      entry.sightings++;
      if (!this.ram.insert(keyHex, layers, blockTokens, bytes)) {
        report.ramRejects++;
        this.droppedBytes += bytes;
        // Without room in RAM the rest of the chain cannot be held either.
        if (isNew) break;
        continue;
      }
      this.addEntry(entry);
      this.applyPinsToRam(entry);
      used.push(keyHex);
      if (isNew) report.blocksAdded++;
      else report.blocksPromoted++;
      report.bytesAdded += bytes;
      this.admit(entry, layers, report);
    }
    for (const keyHex of used.reverse()) this.ram.touch(keyHex);
    return report;
  }

  /** Queues a RAM block for SSD when the tier exists, does not have it, and the policy admits it. */
  private admit(entry: BlockEntry, layers: LayerKV[], report?: PersistReport): void {
    if (!this.ssd || entry.ssd !== "none" || !this.ssd.admits(entry.sightings, this.isPinned(entry))) return;
    const queued = this.ssd.enqueue({
      keyHex: entry.keyHex,
      record: this.chainRecord(entry),
      bytes: this.storedBytesEstimate(entry.tokenIds.length),
      source: { layers },
      done: (result) => this.onWritten(entry, result),
    });
    if (queued) {
      entry.ssd = "queued";
      if (report) report.queuedToSsd++;
    } else if (report) {
      report.ssdSkips++;
    }
  }

  private onWritten(entry: BlockEntry, result: PutResult): void {
    if (result !== "persisted") {
      entry.ssd = "none";
      this.dropIfUnheld(entry);
      return;
    }
    entry.ssd = "stored";
    const remainingMs = entry.softPinUntilMs - Date.now();
    if (entry.hardPinned) this.ssd?.pin(entry.key, "hard");
    else if (remainingMs > 0) this.ssd?.pin(entry.key, { ttlMs: Math.ceil(remainingMs) });
  }

  /** The SSD tier's encoder: RAM blocks are saved in one staging file per batch, then split. */
  private encodeForStore(items: readonly PendingWrite[]): Buffer[] {
    const fromRam = items.flatMap((item, j) =>
      "layers" in item.source ? [{ item, j, layers: item.source.layers }] : [],
    );
    const out: Buffer[] = items.map((item) =>
      "stored" in item.source ? item.source.stored : Buffer.alloc(0),
    );
    if (fromRam.length === 0) return out;
    const stored = this.payloadsFromLayers(
      fromRam.map(({ item, layers }) => ({ record: item.record, layers })),
      true,
    );
    fromRam.forEach(({ j }, k) => (out[j] = stored[k]));
    return out;
  }

  /**
   * Block payloads (safetensors files) of blocks held as MLX arrays, through one staging file;
   * with `envelope`, each preceded by its stored envelope (the SSD form).
   */
  private payloadsFromLayers(
    blocks: { record: ChainRecord; layers: LayerKV[] }[],
    envelope = false,
  ): Buffer[] {
    const arrays: Record<string, mx.array> = {};
    blocks.forEach(({ layers }, j) =>
      layers.forEach((kv, i) => {
        arrays[`${j}.${i}.keys`] = kv.keys;
        arrays[`${j}.${i}.values`] = kv.values;
      }),
    );
    const { bytes, file } = this.staging.arraysToBytes(arrays);
    return blocks.map(({ record }, j) => {
      const header = makeHeader(this.model, record.key, wireParent(record), Array.from(record.tokenIds));
      const pieces: Buffer[] = envelope ? [storedEnvelope(record.root)] : [];
      pieces.push(encodePayloadHeader(header));
      for (let i = 0; i < this.model.numLayers; i++) {
        for (const kind of ["keys", "values"] as const) {
          const info = file.tensors.get(`${j}.${i}.${kind}`)!;
          pieces.push(bytes.subarray(file.dataOffset + info.begin, file.dataOffset + info.end));
        }
      }
      return Buffer.concat(pieces);
    });
  }

  // ---- Block-level API (KVBlocks RPCs) -----------------------------------------------------

  /**
   * Yields one result per key, in order: the block as a self-describing record, or why not.
   * Keys of other tenants are NOT_FOUND. Blocks are read from SSD in batches, or encoded from
   * RAM when only RAM holds them.
   */
  async *getBlocks(
    tenant: string,
    keys: readonly Uint8Array[],
    options: { signal?: AbortSignal; batchBlocks?: number } = {},
  ): AsyncGenerator<GetBlockResult> {
    const rootHex = this.rootOf(tenant).toString("hex");
    const batchBlocks = options.batchBlocks ?? 64;
    for (let i = 0; i < keys.length; i += batchBlocks) {
      options.signal?.throwIfAborted();
      const batch = keys.slice(i, i + batchBlocks).map(asBuffer);
      const results: (GetBlockResult | null)[] = batch.map(() => null);
      const fromSsd: { j: number; entry: BlockEntry }[] = [];
      const fromRam: { j: number; entry: BlockEntry; layers: LayerKV[] }[] = [];
      batch.forEach((key, j) => {
        const entry = key.length === BLOCK_KEY_BYTES ? this.entries.get(key.toString("hex")) : undefined;
        const ramBlock = entry && entry.rootHex === rootHex ? this.ram.get(entry.keyHex) : undefined;
        if (!entry || entry.rootHex !== rootHex) {
          results[j] = notFound(key);
        } else if (entry.ssd === "stored" && this.ssd?.has(entry.key)) {
          fromSsd.push({ j, entry });
        } else if (ramBlock) {
          fromRam.push({ j, entry, layers: ramBlock.layers });
        } else {
          results[j] = notFound(key);
        }
      });
      if (fromRam.length > 0) {
        const payloads = this.payloadsFromLayers(
          fromRam.map(({ entry, layers }) => ({ record: this.chainRecord(entry), layers })),
        );
        fromRam.forEach(({ j, entry }, k) => {
          const header = makeHeader(
            this.model,
            entry.key,
            wireParent(this.chainRecord(entry)),
            Array.from(entry.tokenIds),
          );
          results[j] = { key: batch[j], block: toRecord(header, payloads[k]), tier: "ram" };
        });
      }
      if (fromSsd.length > 0) {
        const read = await this.ssd!.getMany(fromSsd.map((s) => s.entry.key));
        for (let k = 0; k < fromSsd.length; k++) {
          const { j, entry } = fromSsd[k];
          const checked = this.checkStored(entry, read[k]);
          if (checked instanceof BlockError) {
            if (checked.code === "NOT_FOUND") {
              this.ssd!.forget(entry.keyHex);
              this.dropIfUnheld(entry);
              results[j] = notFound(batch[j]);
            } else {
              await this.dropCorrupt(entry);
              results[j] = { key: batch[j], error: { code: "CORRUPT", message: checked.message } };
            }
          } else {
            results[j] = { key: batch[j], block: toRecord(checked.header, checked.payload), tier: "ssd" };
          }
        }
      }
      for (const result of results) yield result!;
    }
  }

  /**
   * Verifies and stores blocks received from a client or another node, in order, so a block
   * may name a parent sent earlier in the same call. Every check runs before anything is kept
   * (see verifyRecord); a block whose parent is unknown here is PARENT_MISSING. Accepted blocks
   * go to SSD when the tier exists (no MLX work), else into RAM.
   */
  async putBlocks(
    tenant: string,
    blocks: Iterable<KVBlockInput> | AsyncIterable<KVBlockInput>,
  ): Promise<PutBlocksReport> {
    const root = this.rootOf(tenant);
    const rootHex = root.toString("hex");
    const rejected: BlockRejection[] = [];
    const writes: Promise<void>[] = [];
    let accepted = 0;
    let index = -1;
    for await (const input of blocks) {
      index++;
      const record = normalizeRecord(input);
      const reject = (code: BlockErrorCode, message: string) =>
        rejected.push({ index, key: record.key, code, message });
      let parsed: ParsedBlock;
      try {
        parsed = verifyRecord(record, { model: this.model, blockTokens: this.options.blockTokens, root });
      } catch (err) {
        if (!(err instanceof BlockError)) throw err;
        reject(err.code, err.message);
        continue;
      }
      const parentHex = record.parentKey.length === 0 ? rootHex : record.parentKey.toString("hex");
      const parent = parentHex === rootHex ? null : this.entries.get(parentHex);
      if (parentHex !== rootHex && (!parent || parent.rootHex !== rootHex)) {
        reject("PARENT_MISSING", "the parent block is not cached here; send the chain from its first block");
        continue;
      }
      if (parent && parent.tokenIds.length !== this.options.blockTokens) {
        reject("SHAPE_MISMATCH", "the parent block is a partial block, which ends its chain");
        continue;
      }
      const keyHex = record.key.toString("hex");
      const existing = this.entries.get(keyHex);
      if (existing && this.tierOf(existing)) {
        accepted++;
        continue;
      }
      const entry: BlockEntry = existing ?? {
        key: Buffer.from(record.key),
        keyHex,
        parentHex,
        rootHex,
        tokenIds: Uint32Array.from(record.tokenIds),
        bytes: blockDataBytes(this.model, record.tokenIds.length),
        ssd: "none",
        sightings: 1,
        hardPinned: false,
        softPinUntilMs: 0,
      };
      if (this.ssd) {
        const stored = Buffer.concat([storedEnvelope(root), record.payload]);
        if (!this.ssd.hasRoom(stored.length)) await this.ssd.flush();
        let settle!: (result: PutResult) => void;
        const written = new Promise<PutResult>((resolve) => (settle = resolve));
        const queued = this.ssd.enqueue({
          keyHex,
          record: { ...this.chainRecord(entry), storedBytes: stored.length },
          bytes: stored.length,
          source: { stored },
          done: (result) => {
            this.onWritten(entry, result);
            settle(result);
          },
        });
        if (!queued) {
          reject("CAPACITY", "the SSD write queue is full");
          continue;
        }
        entry.ssd = "queued";
        this.addEntry(entry);
        const at = index;
        writes.push(
          written.then((result) => {
            if (result === "persisted") accepted++;
            else
              rejected.push({
                index: at,
                key: record.key,
                code: "CAPACITY",
                message: `the SSD tier refused the block: ${result}`,
              });
          }),
        );
      } else {
        if (!this.ram.insert(keyHex, this.layersFromPayload(parsed), record.tokenIds.length, entry.bytes)) {
          reject("CAPACITY", "the RAM tier has no evictable room");
          continue;
        }
        this.addEntry(entry);
        accepted++;
      }
    }
    await Promise.all(writes);
    rejected.sort((a, b) => a.index - b.index);
    return { accepted, rejected };
  }

  /** One block's tensors as MLX arrays [1, kvHeads, tokens, headDim], through a staging file. */
  private layersFromPayload(block: ParsedBlock): LayerKV[] {
    const [kvHeads, tokens, headDim] = block.header.shape;
    const specs: TensorSpec[] = [];
    const pieces: Buffer[] = [];
    for (let i = 0; i < this.model.numLayers; i++) {
      for (const kind of ["keys", "values"] as const) {
        const data = blockTensor(block, i, kind);
        specs.push({
          name: `${i}.${kind}`,
          dtype: "F32",
          shape: [1, kvHeads, tokens, headDim],
          byteLength: data.length,
        });
        pieces.push(data);
      }
    }
    const arrays = this.staging.bytesToArrays(encodeHeader(specs, {}), pieces);
    return Array.from({ length: this.model.numLayers }, (_, i) => ({
      keys: arrays[`${i}.keys`],
      values: arrays[`${i}.values`],
    }));
  }

  /**
   * Pins blocks of the tenant in every tier that holds them; RAM-only blocks are also queued for
   * SSD (whatever the admission policy) so the pin outlives RAM pressure. A hard pin that would
   * take the tenant over hardPinQuotaBytes is refused whole with RESOURCE_EXHAUSTED.
   */
  pin(tenant: string, selector: BlockSelector, kind: PinRequestKind): PinReport {
    const rootHex = this.rootOf(tenant).toString("hex");
    const { found, missing } = this.select(tenant, selector);
    const quota = this.options.hardPinQuotaBytes;
    const pinnedBefore = this.hardPinnedBytes.get(rootHex) ?? 0;
    if (kind.kind === "hard") {
      const extra = found.filter((e) => !e.hardPinned).reduce((n, e) => n + e.bytes, 0);
      if (pinnedBefore + extra > quota) {
        throw new KvparkError(
          "RESOURCE_EXHAUSTED",
          `hard pin of ${extra} bytes would exceed the tenant's quota: ${pinnedBefore} of ${quota} bytes pinned`,
        );
      }
    }
    const ttlMs = kind.kind === "soft" ? kind.ttlMs || this.options.softPinTtlMsDefault : 0;
    for (const entry of found) {
      if (kind.kind === "hard") {
        if (!entry.hardPinned)
          this.hardPinnedBytes.set(rootHex, (this.hardPinnedBytes.get(rootHex) ?? 0) + entry.bytes);
        entry.hardPinned = true;
      } else {
        entry.softPinUntilMs = Math.max(entry.softPinUntilMs, Date.now() + ttlMs);
      }
      this.applyPinsToRam(entry);
      if (entry.ssd === "stored") this.ssd?.pin(entry.key, kind.kind === "hard" ? "hard" : { ttlMs });
      const ramBlock = this.ram.get(entry.keyHex);
      if (ramBlock) this.admit(entry, ramBlock.layers);
    }
    return {
      pinnedBlocks: found.length,
      missingKeys: missing,
      hardPinnedBytes: this.hardPinnedBytes.get(rootHex) ?? 0,
      hardPinQuotaBytes: quota,
    };
  }

  /** Removes hard and soft pins of the tenant's selected blocks; returns how many were pinned. */
  unpin(tenant: string, selector: BlockSelector): { unpinnedBlocks: number } {
    const { found } = this.select(tenant, selector);
    let unpinnedBlocks = 0;
    for (const entry of found) {
      if (this.isPinned(entry)) unpinnedBlocks++;
      this.clearPins(entry);
      this.ram.unpin(entry.keyHex);
      if (entry.ssd === "stored" && this.ssd?.has(entry.key)) this.ssd.unpin(entry.key);
    }
    return { unpinnedBlocks };
  }

  private select(tenant: string, selector: BlockSelector): { found: BlockEntry[]; missing: Buffer[] } {
    const rootHex = this.rootOf(tenant).toString("hex");
    if ("tokens" in selector) {
      const match = this.lookup(tenant, selector.tokens);
      return { found: match.blocks.map((b) => this.entries.get(b.key.toString("hex"))!), missing: [] };
    }
    const found: BlockEntry[] = [];
    const missing: Buffer[] = [];
    for (const bytes of selector.keys) {
      const key = asBuffer(bytes);
      const entry = key.length === BLOCK_KEY_BYTES ? this.entries.get(key.toString("hex")) : undefined;
      if (entry && entry.rootHex === rootHex && this.tierOf(entry)) found.push(entry);
      else missing.push(key);
    }
    return { found, missing };
  }

  // ---- Engine hooks -----------------------------------------------------------------------

  /** Feeds the cost model a measured prefill: `tokens` computed in `ms`. */
  observePrefill(tokens: number, ms: number): void {
    if (tokens <= 0 || ms <= 0) return;
    this.prefillTokensPerMs = ewma(this.prefillTokensPerMs, tokens / ms);
  }

  /**
   * Runs a garbage collection when the MLX bytes the cache dropped since the last one pass
   * gcFreedBytesThreshold and the process was started with --expose-gc; MLX memory is only
   * freed when its JS wrappers are collected. Call it between requests. Returns whether it ran.
   */
  collectIfNeeded(): boolean {
    this.droppedBytes += this.ram.takeFreedBytes();
    const gc = (globalThis as { gc?: () => void }).gc;
    if (this.droppedBytes < this.options.gcFreedBytesThreshold || typeof gc !== "function") return false;
    gc();
    this.droppedBytes = 0;
    return true;
  }

  /** Resolves when every queued SSD write has been answered. */
  async flush(): Promise<void> {
    await this.ssd?.flush();
  }

  stats(): CacheStats {
    const ram = this.ram.stats();
    const ssd = this.ssd?.stats();
    return {
      blockTokens: this.options.blockTokens,
      modelFingerprint: this.model.fingerprint,
      ram: {
        bytes: ram.bytes,
        bytesMax: ram.bytesMax,
        blocks: ram.blocks,
        hits: this.counters.ramHits,
        misses: this.counters.ramMisses,
        evictions: ram.evictions,
        pinnedBlocks: ram.pinnedBlocks,
      },
      ssd: {
        bytes: ssd?.store.bytes ?? 0,
        bytesMax: ssd?.store.bytesMax ?? 0,
        blocks: ssd?.store.blocks ?? 0,
        hits: this.counters.ssdHits,
        misses: this.counters.ssdMisses,
        evictions: ssd?.store.evictions ?? 0,
        pinnedBlocks: ssd?.store.pinnedBlocks ?? 0,
      },
      writeQueueDepth: ssd?.queueBlocks ?? 0,
      writeQueueBytes: ssd?.queueBytes ?? 0,
      writeSkips: ssd?.writeSkips ?? 0,
      writeErrors: ssd?.writeErrors ?? 0,
      corruptBlocks: this.corruptBlocks,
      recomputeChosenTokens: this.recomputeChosenTokens,
      indexedBlocks: this.entries.size,
      ssdIndexSource: ssd?.indexSource ?? "none",
      rates: {
        ssdRestoreBytesPerSecond: this.ssdBytesPerMs * 1000,
        ramRestoreBytesPerSecond: this.ramBytesPerMs * 1000,
        prefillTokensPerSecond: this.prefillTokensPerMs * 1000,
      },
    };
  }

  /** Writes what is queued, closes the SSD tier and removes the staging directory. */
  async close(): Promise<void> {
    try {
      await this.ssd?.close();
    } finally {
      this.staging.close();
    }
  }

  // ---- Index ------------------------------------------------------------------------------

  private rootOf(tenant: string): Buffer {
    let root = this.roots.get(tenant);
    if (!root) {
      root = rootKey(tenant, this.model.fingerprint);
      // Tenants are few (auth identities); the bound only guards against a caller passing junk.
      if (this.roots.size >= 65536) this.roots.clear();
      this.roots.set(tenant, root);
    }
    return root;
  }

  /** The fastest tier holding the block, or null; forgets SSD copies the store has evicted. */
  private tierOf(entry: BlockEntry): Tier | null {
    if (this.ram.has(entry.keyHex)) return "ram";
    if (entry.ssd === "stored") {
      if (this.ssd?.has(entry.key)) return "ssd";
      this.ssd?.forget(entry.keyHex);
      entry.ssd = "none";
      this.dropIfUnheld(entry);
    }
    return null;
  }

  private indexStored(record: ChainRecord): void {
    this.addEntry({
      key: record.key,
      keyHex: record.key.toString("hex"),
      parentHex: record.parent.toString("hex"),
      rootHex: record.root.toString("hex"),
      tokenIds: record.tokenIds,
      bytes: blockDataBytes(this.model, record.tokenIds.length),
      ssd: "stored",
      sightings: 1,
      hardPinned: false,
      softPinUntilMs: 0,
    });
  }

  private addEntry(entry: BlockEntry): void {
    this.entries.set(entry.keyHex, entry);
    let siblings = this.children.get(entry.parentHex);
    if (!siblings) this.children.set(entry.parentHex, (siblings = new Map()));
    siblings.set(entry.keyHex, entry);
  }

  private removeEntry(entry: BlockEntry): void {
    if (this.entries.get(entry.keyHex) !== entry) return;
    this.entries.delete(entry.keyHex);
    const siblings = this.children.get(entry.parentHex);
    siblings?.delete(entry.keyHex);
    if (siblings?.size === 0) this.children.delete(entry.parentHex);
    this.clearPins(entry);
  }

  /** Removes the entry when no tier holds or is about to hold the block. */
  private dropIfUnheld(entry: BlockEntry): void {
    if (entry.ssd === "none" && !this.ram.has(entry.keyHex)) this.removeEntry(entry);
  }

  private onRamDrop(keyHex: string): void {
    const entry = this.entries.get(keyHex);
    if (entry) this.dropIfUnheld(entry);
  }

  private async dropCorrupt(entry: BlockEntry): Promise<void> {
    this.corruptBlocks++;
    entry.ssd = "none";
    await this.ssd?.delete(entry.key);
    this.dropIfUnheld(entry);
  }

  private isPinned(entry: BlockEntry): boolean {
    return entry.hardPinned || entry.softPinUntilMs > Date.now();
  }

  private applyPinsToRam(entry: BlockEntry): void {
    if (entry.hardPinned) this.ram.pin(entry.keyHex, "hard");
    const remainingMs = entry.softPinUntilMs - Date.now();
    if (remainingMs > 0) this.ram.pin(entry.keyHex, { ttlMs: remainingMs });
  }

  private clearPins(entry: BlockEntry): void {
    if (entry.hardPinned) {
      const left = (this.hardPinnedBytes.get(entry.rootHex) ?? 0) - entry.bytes;
      if (left > 0) this.hardPinnedBytes.set(entry.rootHex, left);
      else this.hardPinnedBytes.delete(entry.rootHex);
    }
    entry.hardPinned = false;
    entry.softPinUntilMs = 0;
  }

  private chainRecord(entry: BlockEntry): ChainRecord {
    return {
      key: entry.key,
      parent: Buffer.from(entry.parentHex, "hex"),
      root: Buffer.from(entry.rootHex, "hex"),
      tokenIds: entry.tokenIds,
      storedBytes: this.storedBytesEstimate(entry.tokenIds.length),
    };
  }

  private storedBytesEstimate(tokens: number): number {
    // Envelope and header are a few KiB at most; the data dominates.
    return blockDataBytes(this.model, tokens) + 4096;
  }
}

function checkModel(model: ModelShape): void {
  if (typeof model.fingerprint !== "string" || model.fingerprint === "") {
    throw new TypeError("model fingerprint must be a non-empty string");
  }
  for (const field of ["numLayers", "kvHeads", "headDim"] as const) {
    if (!Number.isSafeInteger(model[field]) || model[field] < 1) {
      throw new TypeError(`model ${field} must be a positive integer`);
    }
  }
}

/** The parent key as the wire carries it: empty for the first block, whose parent is the root. */
function wireParent(record: ChainRecord): Buffer {
  return record.parent.equals(record.root) ? Buffer.alloc(0) : record.parent;
}

function notFound(key: Buffer): GetBlockResult {
  return { key, error: { code: "NOT_FOUND", message: "no such block for this tenant" } };
}

/** Leading tokens of `block` equal to tokens[pos, pos + limit). */
function sharedPrefix(block: Uint32Array, tokens: readonly number[], pos: number, limit: number): number {
  const n = Math.min(block.length, limit);
  let i = 0;
  while (i < n && block[i] === tokens[pos + i]) i++;
  return i;
}

function sameTokens(a: readonly number[], b: Uint32Array): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

function ewma(previous: number, sample: number): number {
  return previous * (1 - RATE_EWMA_WEIGHT) + sample * RATE_EWMA_WEIGHT;
}
