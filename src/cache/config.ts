import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  ADMISSION_POLICIES,
  CONFIG_DEFAULTS,
  FSYNC_MODES,
  optionRange,
  parseSharedTier,
  type Config,
} from "../config";
import type { SharedTierOptions } from "./shared-types";

/**
 * Which blocks the SSD tier accepts from the RAM tier. "all": every new block is written; "reused":
 * a block is written when it is seen a second time (reused by a lookup or persisted again), sparing
 * SSD wear; "pinned": only pinned blocks are written.
 */
export type AdmissionPolicy = (typeof ADMISSION_POLICIES)[number];

/** Every limit of the prefix cache, units last. */
export interface CacheOptions {
  /** Tokens per block. */
  blockTokens: number;
  /** Byte budget of the RAM tier (MLX arrays of the blocks). */
  ramBytesMax: number;
  /** Directory of the SSD tier; null runs the cache in RAM only. */
  ssdDir: string | null;
  /** Cap on the bytes of the SSD tier's files. */
  ssdBytesMax: number;
  /** Segment file size of the SSD store; the store needs ssdBytesMax >= 4 segments. */
  ssdSegmentBytes: number;
  /** "batch": the SSD store fdatasyncs each write batch; "none": page cache only (tests, benchmarks). */
  ssdFsync: (typeof FSYNC_MODES)[number];
  /** Which blocks are written to SSD. */
  admission: AdmissionPolicy;
  /** Blocks waiting for their SSD write; a block that finds the queue full is skipped and counted. */
  writeQueueBlocksMax: number;
  /** Bytes waiting for their SSD write; same rule. */
  writeQueueBytesMax: number;
  /** Bytes serialized per write batch: bounds the pause a batch puts on the engine's thread. */
  writeBatchBytesMax: number;
  /** Bytes of KV read from SSD and loaded into MLX per restore batch (one staging file). */
  restoreBatchBytesMax: number;
  /** Hard-pinned bytes allowed per tenant. */
  hardPinQuotaBytes: number;
  /** Time to live of a soft pin when the caller gives none. */
  softPinTtlMsDefault: number;
  /** Longest time to live a soft pin may ask for. */
  softPinTtlMsMax: number;
  /** Bytes of MLX memory dropped since the last collection after which collectIfNeeded() runs gc(). */
  gcFreedBytesThreshold: number;
  /** Estimate restore against recompute time and recompute SSD blocks when that is faster. */
  costModel: boolean;
  /** Prior for the recompute rate until the engine reports measured prefills. */
  prefillTokensPerSecondPrior: number;
  /** Prior for the SSD restore rate until restores are measured. */
  ssdRestoreBytesPerSecondPrior: number;
  /** Directory on a tmpfs where bytes are staged to enter and leave MLX. */
  stagingDir: string;
  /** The shared tier on Redis after RAM and SSD, or null for none. */
  shared: SharedTierOptions | null;
  /** Prior for the shared tier's restore rate until restores from it are measured. */
  sharedRestoreBytesPerSecondPrior: number;
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * Defaults: those the server's configuration table sets (src/config.ts) come from it, the rest are
 * the cache's own. See docs in CacheOptions and the measurement behind blockTokens in src/cache/README.md.
 */
export const CACHE_DEFAULTS: Readonly<CacheOptions> = {
  blockTokens: CONFIG_DEFAULTS.blockTokens,
  ramBytesMax: CONFIG_DEFAULTS.ramBytesMax,
  ssdDir: null,
  ssdBytesMax: CONFIG_DEFAULTS.ssdBytesMax,
  ssdSegmentBytes: 64 * MiB,
  ssdFsync: CONFIG_DEFAULTS.ssdFsync,
  admission: CONFIG_DEFAULTS.cacheAdmission,
  writeQueueBlocksMax: CONFIG_DEFAULTS.writeQueueBlocksMax,
  writeQueueBytesMax: 1 * GiB,
  writeBatchBytesMax: 8 * MiB,
  restoreBatchBytesMax: 64 * MiB,
  hardPinQuotaBytes: CONFIG_DEFAULTS.hardPinQuotaBytes,
  softPinTtlMsDefault: CONFIG_DEFAULTS.softPinTtlSeconds * 1000,
  softPinTtlMsMax: CONFIG_DEFAULTS.softPinTtlMaxSeconds * 1000,
  gcFreedBytesThreshold: 256 * MiB,
  costModel: CONFIG_DEFAULTS.costModel,
  prefillTokensPerSecondPrior: 50,
  ssdRestoreBytesPerSecondPrior: 400 * 1e6,
  stagingDir: defaultStagingDir(),
  shared: null,
  sharedRestoreBytesPerSecondPrior: 200 * 1e6,
};

/** The shared tier's options from the server's configuration; null without --shared-tier. */
export function sharedOptionsFrom(config: Config): SharedTierOptions | null {
  const { urls } = parseSharedTier(config.sharedTier);
  if (urls.length === 0) return null;
  return {
    urls,
    cluster: config.sharedTierCluster,
    timeoutMs: config.sharedTierTimeoutMs,
    ttlSeconds: config.sharedTierTtlSeconds,
    admission: config.sharedTierAdmission,
    writeQueueBlocksMax: config.sharedTierWriteQueueBlocksMax,
    writeQueueBytesMax: 1 * GiB,
    restoreBatchBytesMax: 16 * MiB,
    keyPrefix: "kvpark:",
  };
}

/** The cache options the server's configuration sets; the rest keep their defaults. */
export function cacheOptionsFrom(config: Config, ssdDir: string): Partial<CacheOptions> {
  return {
    blockTokens: config.blockTokens,
    ramBytesMax: config.ramBytesMax,
    ...(config.ssdBytesMax > 0 ? { ssdDir, ssdBytesMax: config.ssdBytesMax } : { ssdDir: null }),
    ssdFsync: config.ssdFsync,
    admission: config.cacheAdmission,
    writeQueueBlocksMax: config.writeQueueBlocksMax,
    hardPinQuotaBytes: config.hardPinQuotaBytes,
    softPinTtlMsDefault: config.softPinTtlSeconds * 1000,
    softPinTtlMsMax: config.softPinTtlMaxSeconds * 1000,
    costModel: config.costModel,
    shared: sharedOptionsFrom(config),
  };
}

/** A tmpfs directory private to this process: /dev/shm when present, else the OS temp dir. */
export function defaultStagingDir(): string {
  const base = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  return path.join(base, `kvpark-${process.pid}`);
}

/** Merges options over the defaults and checks every limit; throws RangeError naming the field. */
export function resolveCacheOptions(options: Partial<CacheOptions> = {}): CacheOptions {
  const o: CacheOptions = { ...CACHE_DEFAULTS, ...options };
  const int = (field: keyof CacheOptions, min: number, max = Number.MAX_SAFE_INTEGER): void => {
    const v = o[field];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new RangeError(`cache option ${field} must be an integer in [${min}, ${max}], got ${String(v)}`);
    }
  };
  const positive = (field: keyof CacheOptions): void => {
    const v = o[field];
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw new RangeError(`cache option ${field} must be a positive number, got ${String(v)}`);
    }
  };
  // Limits the server's options also set are the table's (src/config.ts).
  const range = (key: keyof Config, scale = 1): [number, number] => {
    const { min, max } = optionRange(key);
    return [min * scale, max * scale];
  };
  int("blockTokens", ...range("blockTokens"));
  int("ramBytesMax", ...range("ramBytesMax"));
  int("ssdSegmentBytes", 64 * 1024);
  // The store needs room for four segments (with the default segments, the table's 256 MiB).
  int("ssdBytesMax", 4 * o.ssdSegmentBytes, optionRange("ssdBytesMax").max);
  int("writeQueueBlocksMax", ...range("writeQueueBlocksMax"));
  int("writeQueueBytesMax", 0);
  int("writeBatchBytesMax", 1);
  int("restoreBatchBytesMax", 1);
  int("hardPinQuotaBytes", ...range("hardPinQuotaBytes"));
  int("softPinTtlMsMax", ...range("softPinTtlMaxSeconds", 1000));
  int("softPinTtlMsDefault", range("softPinTtlSeconds", 1000)[0], o.softPinTtlMsMax);
  int("gcFreedBytesThreshold", 0);
  positive("prefillTokensPerSecondPrior");
  positive("ssdRestoreBytesPerSecondPrior");
  positive("sharedRestoreBytesPerSecondPrior");
  if (o.shared !== null) checkShared(o.shared);
  if (o.ssdDir !== null && (typeof o.ssdDir !== "string" || o.ssdDir === "")) {
    throw new RangeError("cache option ssdDir must be a directory path or null");
  }
  if (!FSYNC_MODES.includes(o.ssdFsync)) {
    throw new RangeError(`cache option ssdFsync must be "batch" or "none", got ${String(o.ssdFsync)}`);
  }
  if (!ADMISSION_POLICIES.includes(o.admission)) {
    throw new RangeError(
      `cache option admission must be one of ${ADMISSION_POLICIES.join(", ")}, got ${String(o.admission)}`,
    );
  }
  if (typeof o.costModel !== "boolean") throw new RangeError("cache option costModel must be true or false");
  if (typeof o.stagingDir !== "string" || o.stagingDir === "") {
    throw new RangeError("cache option stagingDir must be a directory path");
  }
  return o;
}

function checkShared(s: SharedTierOptions): void {
  if (!Array.isArray(s.urls) || s.urls.length === 0 || parseSharedTier(s.urls.join(",")).problems.length) {
    throw new RangeError(`cache option shared.urls must be redis:// addresses, got ${String(s.urls)}`);
  }
  const int = (field: keyof SharedTierOptions, min: number) => {
    const v = s[field];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min)
      throw new RangeError(`cache option shared.${field} must be an integer >= ${min}, got ${String(v)}`);
  };
  int("timeoutMs", 1);
  int("ttlSeconds", 0);
  int("writeQueueBlocksMax", 0);
  int("writeQueueBytesMax", 0);
  int("restoreBatchBytesMax", 1);
  if (!ADMISSION_POLICIES.includes(s.admission))
    throw new RangeError(`cache option shared.admission must be one of ${ADMISSION_POLICIES.join(", ")}`);
  if (typeof s.keyPrefix !== "string") throw new RangeError("cache option shared.keyPrefix must be a string");
}
