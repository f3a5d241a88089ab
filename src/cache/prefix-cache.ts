import * as path from "node:path";
import { hasRecurrentLayers, layoutVersionOf, makeHeader, toRecord, type ModelShape } from "./block-codec";
import { BlockIndex } from "./block-index";
import { resolveCacheOptions, type CacheOptions } from "./config";
import { CacheMaintenance } from "./maintenance";
import { BlockPayloads, wireParent } from "./payloads";
import { Persister } from "./persist";
import { Pins } from "./pins";
import { RamTier } from "./ram-tier";
import { nodeFileIo } from "./file-io";
import type {
  BlockSelector,
  CacheSeams,
  CacheStats,
  ClearReport,
  LookupOptions,
  PinReport,
  PinRequestKind,
  PrefixMatch,
} from "./reports";
import { Restorer } from "./restore";
import { SharedTier } from "./shared-tier";
import type { SharedWrite } from "./shared-types";
import { SsdTier } from "./ssd-tier";
import { Staging, removeStaleStagingDirs } from "./staging";
import { layerSpecs, stagesWhole } from "./layer-sink";
import { prefault, warmUpRestore, warmUpVerify } from "./warm-up";
import type { ModelCache } from "../model/model-cache";
import { BlockTransfer } from "./transfer";

/**
 * The prefix cache: KV blocks of earlier prompts in RAM (MLX arrays) and on SSD (the native
 * store), found by a hash chain from a per-tenant root, and restored into a sequence instead of
 * being recomputed.
 *
 * The engine's thread owns it: every method that touches MLX (restore, persist, getBlocks of
 * RAM blocks, putBlocks without an SSD tier, and the SSD write queue's encoder) runs there.
 *
 * A facade over its parts, which share the block index: lookup (block-index.ts), restore and
 * its cost model (restore.ts), persist and SSD admission (persist.ts), block transfer for the
 * KVBlocks RPCs (transfer.ts), and pins and quotas (pins.ts), the only place pin state is decided.
 */
export class PrefixCache {
  readonly options: CacheOptions;
  private readonly pins: Pins;
  private readonly ram: RamTier;
  private readonly index: BlockIndex;
  private readonly restorer: Restorer;
  private readonly persister: Persister;
  private readonly transfer: BlockTransfer;
  private readonly maintenance: CacheMaintenance;
  private droppedBytes = 0;

  private constructor(
    readonly model: ModelShape,
    options: CacheOptions,
    private readonly staging: Staging,
    private readonly payloads: BlockPayloads,
    private readonly ssd: SsdTier | null,
    private readonly shared: SharedTier | null,
    nowMs: () => number,
    log: (line: string) => void,
  ) {
    this.options = options;
    this.pins = new Pins(options, ssd, nowMs);
    this.ram = new RamTier(
      options.ramBytesMax,
      (keyHex, evicted) => this.index.onRamDrop(keyHex, evicted),
      (keyHex) => this.pins.isPinned(keyHex),
    );
    this.index = new BlockIndex(model, options, this.ram, ssd, this.pins);
    const parts = {
      model,
      options,
      staging,
      payloads,
      ssd,
      shared,
      pins: this.pins,
      ram: this.ram,
      index: this.index,
      nowMs,
      log,
    };
    this.restorer = new Restorer(parts);
    this.persister = new Persister(parts);
    this.transfer = new BlockTransfer(parts);
    this.maintenance = new CacheMaintenance(parts);
  }

  /**
   * Opens the cache for a model: RAM tier empty, SSD tier (when ssdDir is set) with the chain
   * index of every block it holds and their pins, so prompts seen before a restart hit and pinned
   * blocks stay pinned. `seams` are for tests (file I/O of the side files, log, clock).
   */
  static async open(
    model: ModelShape,
    options: Partial<CacheOptions> = {},
    seams: CacheSeams = {},
  ): Promise<PrefixCache> {
    checkModel(model);
    const resolved = resolveCacheOptions(options);
    if (/^kvpark-\d+$/.test(path.basename(resolved.stagingDir))) {
      removeStaleStagingDirs(path.dirname(resolved.stagingDir));
    }
    const staging = new Staging(resolved.stagingDir);
    const payloads = new BlockPayloads(model, staging);
    const o = resolved;
    const nowMs = seams.nowMs ?? Date.now;
    let ssd: SsdTier | null = null;
    if (o.ssdDir !== null) {
      try {
        ssd = await SsdTier.open(
          {
            dir: o.ssdDir,
            bytesMax: o.ssdBytesMax,
            segmentBytes: o.ssdSegmentBytes,
            fsync: o.ssdFsync,
            admission: o.admission,
            writeQueueBlocksMax: o.writeQueueBlocksMax,
            writeQueueBytesMax: o.writeQueueBytesMax,
            writeBatchBytesMax: o.writeBatchBytesMax,
            fingerprint: model.fingerprint,
            layoutVersion: layoutVersionOf(model),
          },
          (items) => payloads.encodeForStore(items),
          { io: seams.fileIo ?? nodeFileIo, log: seams.log ?? ((line) => console.error(line)), nowMs },
        );
      } catch (err) {
        staging.close();
        throw err;
      }
    }
    const log = seams.log ?? ((line: string) => console.error(line));
    // The shared tier connects in the background and never fails the open: a node whose Redis is
    // down serves from its local tiers and starts using the tier once the client reconnects.
    const shared = o.shared
      ? new SharedTier(o.shared, (items) => encodeShared(model, payloads, items), log, nowMs)
      : null;
    const cache = new PrefixCache(model, resolved, staging, payloads, ssd, shared, nowMs, log);
    for (const record of ssd?.records.values() ?? []) cache.index.indexStored(record);
    for (const pin of ssd?.openPins ?? []) {
      const entry = cache.index.get(pin.key.toString("hex"));
      if (entry) cache.pins.learn(entry, pin);
    }
    return cache;
  }

  get blockTokens(): number {
    return this.options.blockTokens;
  }

  /**
   * Bytes the cache holds in the process besides the RAM tier, allocated by the first SSD restore
   * and kept: its read arenas (Restorer).
   */
  get heldBytes(): number {
    return this.restorer.heldBytes;
  }

  /** The longest cached prefix of a tenant's prompt: BlockIndex.lookup. */
  lookup(...args: Parameters<BlockIndex["lookup"]>) {
    return this.index.lookup(...args);
  }

  /**
   * lookup, continued in the shared tier where the local tiers end (when the server has one and the
   * local match ended on a whole full block): the blocks Redis holds after it, found by their keys
   * in pipelined batches (a few round trips for a long prompt), then at most one block the prompt
   * shares in part. Bounded by the tier's timeout; on a timeout or an error the local match is
   * returned as it was. The only lookup that does network I/O, hence asynchronous.
   */
  async lookupShared(
    tenant: string,
    tokens: readonly number[],
    options: LookupOptions = {},
  ): Promise<PrefixMatch> {
    const match = this.index.lookup(tenant, tokens, options);
    const shared = this.shared;
    if (!shared) return match;
    const B = this.options.blockTokens;
    const limit = Math.min(tokens.length, Math.max(0, options.tokensMax ?? tokens.length));
    const last = match.blocks.at(-1);
    if (match.tokens >= limit || (last && (last.tokens < last.blockTokens || last.blockTokens < B)))
      return match;
    const t0 = performance.now();
    const parent = last ? last.key : this.index.rootOf(tenant);
    const links = await shared.extend(
      parent,
      tokens,
      match.tokens,
      limit,
      B,
      this.model.fingerprint,
      layoutVersionOf(this.model),
      t0 + shared.options.timeoutMs,
    );
    match.lookupMs += performance.now() - t0;
    if (links.length === 0) return match;
    let pos = match.tokens;
    for (const link of links) {
      match.blocks.push({
        key: link.key,
        start: pos,
        tokens: link.tokens,
        blockTokens: link.tokenIds.length,
        tier: "shared",
        shared: { parent: link.parent, tokenIds: link.tokenIds },
      });
      pos += link.tokens;
    }
    const end = links[links.length - 1];
    match.sharedTokens = pos - match.tokens;
    match.tokens = pos;
    // The walk now ends in the shared tier: what it left is the rest of its last block there.
    match.divergedTokens = pos < limit ? end.tokenIds.length - end.tokens : 0;
    return match;
  }

  /** Puts a match's KV into a fresh sequence: Restorer.restore. */
  restore(...args: Parameters<Restorer["restore"]>) {
    return this.restorer.restore(...args);
  }

  /** Stores a sequence's KV in RAM and, as admitted, on SSD: Persister.persist. */
  persist(...args: Parameters<Persister["persist"]>) {
    return this.persister.persist(...args);
  }

  /** The tenant's blocks as self-describing records, for GetBlocks: BlockTransfer.getBlocks. */
  getBlocks(...args: Parameters<BlockTransfer["getBlocks"]>) {
    return this.transfer.getBlocks(...args);
  }

  /** Verifies and stores blocks received with PutBlocks: BlockTransfer.putBlocks. */
  putBlocks(...args: Parameters<BlockTransfer["putBlocks"]>) {
    return this.transfer.putBlocks(...args);
  }

  /** A bundle of the tenant's blocks, entry by entry, for Export: BlockTransfer.exportBundle. */
  exportBundle(...args: Parameters<BlockTransfer["exportBundle"]>) {
    return this.transfer.exportBundle(...args);
  }

  /** Verifies and stores a bundle's blocks, for Import: BlockTransfer.importBundle. */
  importBundle(...args: Parameters<BlockTransfer["importBundle"]>) {
    return this.transfer.importBundle(...args);
  }

  /** One page of the cached blocks, for ListBlocks: CacheMaintenance.listBlocks. */
  listBlocks(...args: Parameters<CacheMaintenance["listBlocks"]>) {
    return this.maintenance.listBlocks(...args);
  }

  /** Takes selected blocks of the tenant out of RAM, SSD or both, for Evict: CacheMaintenance.evict. */
  evict(...args: Parameters<CacheMaintenance["evict"]>) {
    return this.maintenance.evict(...args);
  }

  /** Removes every block of the tenant, or with no tenant every block, for Clear. */
  clear(tenant?: string): Promise<ClearReport> {
    return this.maintenance.clear(tenant === undefined ? null : this.index.rootOf(tenant).toString("hex"));
  }

  /**
   * Pins blocks of the tenant in every tier that holds them; RAM-only blocks are also queued for
   * SSD (whatever the admission policy) so the pin outlives RAM pressure, and the pin is recorded
   * in the SSD tier's pin journal so it outlives a restart. A pin that would take the tenant's
   * pinned bytes (hard and soft) over hardPinQuotaBytes is refused whole with RESOURCE_EXHAUSTED; a
   * soft pin longer than softPinTtlMsMax with INVALID_ARGUMENT.
   */
  pin(tenant: string, selector: BlockSelector, kind: PinRequestKind): PinReport {
    const { found, missing } = this.index.select(tenant, selector);
    const quota = this.pins.pin(this.index.rootOf(tenant).toString("hex"), found, kind);
    this.persister.admitPinned(found);
    return { pinnedBlocks: found.length, missingKeys: missing, ...quota };
  }

  /** Removes hard and soft pins of the tenant's selected blocks; returns how many were pinned. */
  unpin(tenant: string, selector: BlockSelector): { unpinnedBlocks: number } {
    return { unpinnedBlocks: this.pins.unpin(this.index.select(tenant, selector).found) };
  }

  /** Feeds the cost model a measured prefill: Restorer.observePrefill. */
  observePrefill(...args: Parameters<Restorer["observePrefill"]>): void {
    this.restorer.observePrefill(...args);
  }

  /**
   * MLX bytes the cache dropped (evictions, restore and persist temporaries) since the previous
   * call: what a garbage collection could give back. The engine adds them to its own dropped bytes
   * and collects on the sum (Collector).
   */
  takeDroppedBytes(): number {
    return this.ram.takeFreedBytes() + this.restorer.takeDroppedBytes() + this.persister.takeDroppedBytes();
  }

  /**
   * For a cache used on its own: runs a garbage collection when the MLX bytes it dropped since the
   * last one pass gcFreedBytesThreshold and the process was started with --expose-gc; MLX memory is
   * only freed when its JS wrappers are collected. Call it between requests. Returns whether it ran.
   */
  collectIfNeeded(): boolean {
    this.droppedBytes += this.takeDroppedBytes();
    const gc = (globalThis as { gc?: () => void }).gc;
    if (this.droppedBytes < this.options.gcFreedBytesThreshold || typeof gc !== "function") return false;
    gc();
    this.droppedBytes = 0;
    return true;
  }

  /** Resolves when every queued SSD and shared-tier write has been answered. */
  async flush(): Promise<void> {
    await Promise.all([this.ssd?.flush(), this.shared?.flush()]);
  }

  /**
   * The cache's numbers. With `tenant`, the tiers' bytes, blocks, pinned blocks, hits, misses and
   * evictions and indexedBlocks count only that tenant's blocks (by its root key); without, the
   * whole server's. The rest (limits, write queue and errors, rates) is server-wide either way.
   */
  stats(tenant?: string): CacheStats {
    const rootHex = tenant === undefined ? null : this.index.rootOf(tenant).toString("hex");
    const ram = this.ram.stats(
      rootHex === null ? undefined : (keyHex) => this.index.get(keyHex)?.rootHex === rootHex,
    );
    const ssd = this.ssd?.stats();
    const counters = rootHex === null ? this.index.counters : this.index.countersOf(rootHex);
    let ssdHeld = {
      bytes: ssd?.store.bytes ?? 0,
      blocks: ssd?.store.blocks ?? 0,
      pinnedBlocks: ssd?.store.pinnedBlocks ?? 0,
    };
    if (rootHex !== null) {
      const stored = this.ssd?.storedOf(rootHex) ?? [];
      ssdHeld = {
        bytes: stored.reduce((n, r) => n + r.storedBytes, 0),
        blocks: stored.length,
        pinnedBlocks: stored.filter((r) => this.pins.isPinned(r.key.toString("hex"))).length,
      };
    }
    return {
      blockTokens: this.options.blockTokens,
      modelFingerprint: this.model.fingerprint,
      ram: {
        bytes: ram.bytes,
        bytesMax: ram.bytesMax,
        blocks: ram.blocks,
        hits: counters.ramHits,
        misses: counters.ramMisses,
        evictions: rootHex === null ? ram.evictions : counters.ramEvictions,
        pinnedBlocks: ram.pinnedBlocks,
        removed: counters.ramRemoved,
      },
      ssd: {
        ...ssdHeld,
        bytesMax: ssd?.store.bytesMax ?? 0,
        hits: counters.ssdHits,
        misses: counters.ssdMisses,
        evictions: rootHex === null ? (ssd?.store.evictions ?? 0) : counters.ssdEvictions,
        removed: counters.ssdRemoved,
      },
      writeQueueDepth: ssd?.queueBlocks ?? 0,
      writeQueueBytes: ssd?.queueBytes ?? 0,
      writeSkips: ssd?.writeSkips ?? 0,
      writeErrors: ssd?.writeErrors ?? 0,
      writeErrorsEnospc: ssd?.writeErrorsByCause.ENOSPC ?? 0,
      writeErrorsEio: ssd?.writeErrorsByCause.EIO ?? 0,
      writeErrorsOther: ssd?.writeErrorsByCause.other ?? 0,
      corruptBlocks: this.index.corruptBlocks,
      recomputeChosenTokens: this.restorer.recomputeChosenTokens,
      indexedBlocks: rootHex === null ? this.index.size : this.index.sizeOf(rootHex),
      ssdIndexSource: ssd?.index.source ?? "none",
      ssdIndexReadBack: ssd?.index.readBack ?? 0,
      ssdQuarantinedSegments: ssd?.store.quarantinedSegments ?? 0,
      shared: this.shared
        ? {
            ...this.shared.counters,
            connected: this.shared.connected,
            writeQueueDepth: this.shared.queueBlocks,
            writeQueueBytes: this.shared.queuedBytes,
          }
        : null,
      rates: this.restorer.rates(),
    };
  }

  /**
   * What a new engine runs before it reports ready, so that its first restore pays no one-time
   * costs: the persist and restore paths once from a throwaway sequence `from` into a fresh one
   * `into`, and the check of a stored block (warm-up.ts). When there is a tier to restore from,
   * the staging file is grown to one restore batch, whose tmpfs pages a restore would otherwise
   * allocate; for a model whose SSD runs are staged whole, the SSD reads' two arenas are
   * allocated and their pages faulted in (ReadArenas.prepare); and the layer file is grown to the
   * longest chain on SSD (at most `contextTokens`, rounded up as a sequence's capacity is, plus
   * one step), and buffers of that shape are allocated once so the allocator keeps their pages;
   * not when those buffers would take more than `bytesMax` (what the engine's memory budget leaves
   * a sequence).
   */
  warmUp(from: ModelCache, into: ModelCache, contextTokens: number, bytesMax = Infinity): void {
    warmUpRestore(this.staging, from, into);
    warmUpVerify(this.payloads, from);
    if (!this.ssd && !this.shared) return;
    this.staging.prepare(this.options.restoreBatchBytesMax);
    // The memory budget counts the read arenas either way (heldBytes).
    this.restorer.prepareArenas();
    const longest = Math.min(this.index.longestChainTokens(), contextTokens);
    if (longest === 0 || !stagesWhole(this.model)) return;
    const step = into.stepTokens;
    const specs = layerSpecs(this.model, (Math.ceil(longest / step) + 1) * step);
    if (specs.reduce((n, t) => n + t.byteLength, 0) > bytesMax) return;
    this.staging.prepareLayers(specs);
    prefault(specs);
  }

  /**
   * Tells the SSD and shared tiers' pumps when a request waits for its first token: they then write
   * a backlog of finished requests' blocks one batch per WriteQueue's spacing at most, between that
   * request's steps, instead of one per step.
   */
  deferWritesWhile(urgent: () => boolean): void {
    this.ssd?.deferWritesWhile(urgent);
    this.shared?.deferWritesWhile(urgent);
  }

  /** Writes what is queued, closes the SSD and shared tiers and removes the staging directory. */
  async close(): Promise<void> {
    try {
      await Promise.all([this.ssd?.close(), this.shared?.close()]);
    } finally {
      this.staging.close();
    }
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
  if (model.layerTypes && model.layerTypes.length !== model.numLayers) {
    throw new TypeError(`model layerTypes lists ${model.layerTypes.length} layers, not ${model.numLayers}`);
  }
  if (hasRecurrentLayers(model) && !model.recurrentShape) {
    throw new TypeError("a model with recurrent layers needs their snapshot shapes (recurrentShape)");
  }
}

/** The shared tier's encoder: a batch of RAM blocks through one staging file, as wire records. */
function encodeShared(model: ModelShape, payloads: BlockPayloads, items: readonly SharedWrite[]) {
  const records = items.map((item) => ({
    key: item.key,
    parent: item.parent,
    root: item.root,
    tokenIds: item.tokenIds,
    storedBytes: 0,
  }));
  const encoded = payloads.payloadsFromLayers(
    records.map((record, i) => ({ record, layers: items[i].layers })),
  );
  return records.map((record, i) =>
    toRecord(makeHeader(model, record.key, wireParent(record), Array.from(record.tokenIds)), encoded[i]),
  );
}
