import type { ModelCache } from "../model/model-cache";
import type { FileIo } from "./file-io";
import type { KVBlockRecord } from "./block-codec";
import type { BlockErrorCode } from "./errors";

// The types PrefixCache's methods take and return; src/cache/index.ts exports them.

/** The part of a sequence's ModelCache the prefix cache reads (persist) and writes (restore). */
export type SequenceKV = Pick<
  ModelCache,
  | "offset"
  | "capacity"
  | "stepTokens"
  | "export"
  | "import"
  | "adopt"
  | "importRecurrent"
  | "canExport"
  | "state"
>;

/** Where a cached block is served from. */
export type Tier = "ram" | "ssd";

/** Where a matched block comes from: a local tier, or the shared tier on Redis (lookupShared). */
export type MatchTier = Tier | "shared";

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
  tier: MatchTier;
  /** A shared block's parent key and token ids (what its value must say), from the lookup. */
  shared?: { parent: Buffer; tokenIds: number[] };
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
  /** Tokens of blocks found in the shared tier (lookupShared only). */
  sharedTokens: number;
  /**
   * Cached tokens the prompt matched into and then left: reuse lost because the prompt differs
   * from what was cached, for example when a chat template re-renders an earlier answer
   * differently. Precisely, when lookup matched at least one token and stopped before tokensMax
   * (and the prompt's end), with `last` the last matched block:
   *
   *   (last.blockTokens - last.tokens) + tokens of the longest line of cached blocks below `last`
   *
   * that is, the cached tokens past the match point on the path lookup followed (the rest of the
   * block the prompt left mid-way, or at a block boundary nothing of it, then the longest chain of
   * descendants any tier holds; the search stops after 4,096 blocks). Otherwise 0: a prompt
   * sharing no token with the tenant's cache followed no path, and one that ends inside cached
   * context left none. Also 0 when the match ends on a block used whole that nothing cached
   * continues: a trailing partial block (it ends its chain, so the prompt extends the cached
   * sequence) or a full block without cached children.
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
  /** Waiting for shared-tier reads that were not hidden behind other work. */
  sharedReadWaitMs: number;
}

/** What restore() put into the sequence and what it cost. */
export interface RestoreReport {
  /** Tokens now in the sequence (its offset). */
  restoredTokens: number;
  ramTokens: number;
  ssdTokens: number;
  /** Tokens restored from the shared tier. */
  sharedTokens: number;
  /** Bytes of values read from the shared tier. */
  sharedBytes: number;
  /** Tokens cached on SSD (and RAM blocks after them) left to recompute because that was estimated faster. */
  recomputeChosenTokens: number;
  /** Blocks that failed verification; the match was cut before the first of them. */
  corruptBlocks: number;
  /** Tokens of the match lost because a block vanished or failed (not counting recomputeChosenTokens). */
  lostTokens: number;
  /**
   * Tokens of a match ending mid-block left to recompute because the model has recurrent layers:
   * their state is known only at block ends, so the restore stops at the last whole block.
   */
  midBlockTokens: number;
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
  tier: MatchTier;
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
  /**
   * The blocks come from an engine step that will be followed by more such steps (a prefill chunk
   * handing over its blocks as it goes): the tiers' pumps write them within their next turn, so that
   * their queues keep pace with the steps. Otherwise (a finished request's blocks) they drain a batch
   * per turn, and a request that arrives meanwhile waits for one batch, not for all. Default false.
   */
  keepPace?: boolean;
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
  /** The tenant's bytes under hard pins, after the call. */
  hardPinnedBytes: number;
  /** The tenant's bytes under unexpired soft pins only, after the call; they count against the quota too. */
  softPinnedBytes: number;
  /** The tenant's quota of pinned bytes, hard and soft together. */
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
  /** Blocks removed on request (evict, clear, a refused import), not counted in evictions. */
  removed: number;
}

/** A block's pin as listBlocks() shows it. */
export type PinState = { kind: "hard" } | { kind: "soft"; untilMs: number } | null;

/** A cached block, as listBlocks() describes it. */
export interface ListedBlock {
  key: Buffer;
  /** The previous block's key; empty for a chain's first block. */
  parentKey: Buffer;
  /** Every tier holding the block, fastest first. */
  tiers: Tier[];
  tokens: number;
  /** Bytes of its KV in float32 (its size in the RAM tier). */
  bytes: number;
  /** Bytes of its stored form on SSD; 0 when the SSD tier does not hold it. */
  ssdBytes: number;
  pin: PinState;
  /** When a request last stored or restored it (Unix ms); 0 for a block found on SSD at open and unused since. */
  usedAtMs: number;
  /** Its tenant, when listing every tenant and one of the names given has its root. */
  tenant?: string;
}

/** Whose blocks listBlocks() lists: one tenant's, or every tenant's (naming those in `names`). */
export type ListScope = { tenant: string } | { names: readonly string[] };

/** One page of listBlocks(). */
export interface BlockListing {
  /** Blocks ordered by key. */
  blocks: ListedBlock[];
  /** The hex key to pass as `after` for the next page; "" on the last page. */
  nextAfter: string;
  /** Blocks in every page together, now. */
  total: number;
}

/** Where evict() takes blocks from. */
export type EvictTier = "ram" | "ssd" | "both";

/** The outcome of evict(). */
export interface EvictReport {
  /** Selected blocks removed from at least one of the tiers asked for. */
  evictedBlocks: number;
  /** Selected blocks left in place because they are pinned (no force). */
  skippedPinnedBlocks: number;
  /** Keys asked for that the tenant has not cached. */
  missingKeys: Buffer[];
  ramBytesFreed: number;
  ssdBytesFreed: number;
}

/** The outcome of clear(). */
export interface ClearReport {
  /** Blocks removed from every tier. */
  removedBlocks: number;
  /** Of those, blocks that were pinned. */
  unpinnedBlocks: number;
  ramBytesFreed: number;
  ssdBytesFreed: number;
}

/** What exportBundle() wrote. */
export interface ExportReport {
  blocks: number;
  /** Blocks selected but left out (gone or failed verification while exporting, with those below them). */
  skippedBlocks: number;
  /** Bytes of the bundle. */
  bytes: number;
}

/** The outcome of importBundle(). */
export interface ImportReport {
  /** Blocks in the bundle. */
  blocks: number;
  /** Of those, blocks this call stored. */
  storedBlocks: number;
  /** Of those, blocks the cache held already. */
  presentBlocks: number;
  /** Tokens in the bundle's blocks. */
  tokens: number;
}

/**
 * Everything the Stats RPC and the metrics report. stats(tenant) scopes to the tenant's own blocks
 * (by its root key) the tiers' bytes, blocks, pinned blocks, hits, misses and evictions, and
 * indexedBlocks; bytesMax and everything else stays server-wide.
 */
export interface CacheStats {
  blockTokens: number;
  modelFingerprint: string;
  ram: TierStats;
  ssd: TierStats;
  writeQueueDepth: number;
  writeQueueBytes: number;
  writeSkips: number;
  /**
   * Failed SSD writes: blocks the store refused or failed to write (or that could not be encoded),
   * and failed writes of the tier's side files, chain.log and pins.log (each append, sync or
   * rewrite). The sum of the three below.
   */
  writeErrors: number;
  /** Of writeErrors: the disk was full. */
  writeErrorsEnospc: number;
  /** Of writeErrors: the device reported an I/O error. */
  writeErrorsEio: number;
  /** Of writeErrors: anything else (another errno, the store's cap, a batch that could not be encoded). */
  writeErrorsOther: number;
  corruptBlocks: number;
  recomputeChosenTokens: number;
  /** Blocks known to the chain index (any tier). */
  indexedBlocks: number;
  /** Where the SSD tier's chain index came from at open ("none" without an SSD tier). */
  ssdIndexSource: "log" | "scan" | "empty" | "none";
  /** Blocks the open read back from the store because the chain log did not describe them. */
  ssdIndexReadBack: number;
  /** Segment files of the SSD store set aside at open because their header was damaged. */
  ssdQuarantinedSegments: number;
  /** The shared tier on Redis: null when the server has none. */
  shared: SharedStats | null;
  /** Measured rates the cost model uses. */
  rates: {
    sharedRestoreBytesPerSecond: number;
    ssdRestoreBytesPerSecond: number;
    ramRestoreBytesPerSecond: number;
    prefillTokensPerSecond: number;
  };
}

/** The shared tier's numbers, server-wide (Redis holds every node's blocks; its size is Redis' to report). */
export interface SharedStats {
  /** Connected to Redis now. */
  connected: boolean;
  /** Blocks lookups found in the tier. */
  hits: number;
  /** Lookups that reached the tier and found nothing more there. */
  misses: number;
  readBlocks: number;
  readBytes: number;
  writtenBlocks: number;
  writtenBytes: number;
  /** Blocks not written because the queue was full. */
  writeSkips: number;
  writeErrors: number;
  writeQueueDepth: number;
  writeQueueBytes: number;
  /** Lookups and reads that failed (Redis down or refusing) or were skipped while too much was pending. */
  readErrors: number;
  /** Lookups and restore batches that ran out of --shared-tier-timeout-ms. */
  timeouts: number;
  /** Blocks read back that failed verification: refused, deleted from Redis, recomputed. */
  rejectedBlocks: number;
  /** Blocks found by a lookup and gone when restore read them. */
  lostBlocks: number;
  /** Round trips to Redis and their total time. */
  requests: number;
  requestMs: number;
}

/** What the cache's SSD tier writes its side files with, logs with and reads the time from; tests swap them. */
export interface CacheSeams {
  /** File operations of chain.log and pins.log (default node:fs). */
  fileIo?: FileIo;
  /** One line per event worth an operator's attention, rate-limited (default console.error). */
  log?: (line: string) => void;
  /** Unix milliseconds, for soft pins and the log's rate limit (default Date.now). */
  nowMs?: () => number;
}
