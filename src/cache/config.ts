import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** Which blocks the SSD tier accepts from the RAM tier. */
export type AdmissionPolicy =
  /** Every new block is written. */
  | "all"
  /** A block is written when it is seen a second time (reused by a lookup or persisted again), sparing SSD wear. */
  | "reused"
  /** Only pinned blocks are written. */
  | "pinned";

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
  ssdFsync: "batch" | "none";
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
}

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** Defaults; see docs in CacheOptions and the measurement behind blockTokens in src/cache/README.md. */
export const CACHE_DEFAULTS: Readonly<CacheOptions> = {
  blockTokens: 64,
  ramBytesMax: 2 * GiB,
  ssdDir: null,
  ssdBytesMax: 32 * GiB,
  ssdSegmentBytes: 64 * MiB,
  ssdFsync: "batch",
  admission: "all",
  writeQueueBlocksMax: 4096,
  writeQueueBytesMax: 1 * GiB,
  writeBatchBytesMax: 32 * MiB,
  restoreBatchBytesMax: 64 * MiB,
  hardPinQuotaBytes: 1 * GiB,
  softPinTtlMsDefault: 10 * 60 * 1000,
  gcFreedBytesThreshold: 256 * MiB,
  costModel: true,
  prefillTokensPerSecondPrior: 50,
  ssdRestoreBytesPerSecondPrior: 400 * 1e6,
  stagingDir: defaultStagingDir(),
};

/** A tmpfs directory private to this process: /dev/shm when present, else the OS temp dir. */
export function defaultStagingDir(): string {
  const base = fs.existsSync("/dev/shm") ? "/dev/shm" : os.tmpdir();
  return path.join(base, `kvpark-${process.pid}`);
}

const ADMISSION_POLICIES: readonly AdmissionPolicy[] = ["all", "reused", "pinned"];

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
  // A block's token ids travel in its header; 4096 keeps headers small and blocks under the
  // store's payload limit for any model kvpark runs.
  int("blockTokens", 1, 4096);
  int("ramBytesMax", 0);
  int("ssdSegmentBytes", 64 * 1024);
  int("ssdBytesMax", 4 * o.ssdSegmentBytes);
  int("writeQueueBlocksMax", 0);
  int("writeQueueBytesMax", 0);
  int("writeBatchBytesMax", 1);
  int("restoreBatchBytesMax", 1);
  int("hardPinQuotaBytes", 0);
  int("softPinTtlMsDefault", 1);
  int("gcFreedBytesThreshold", 0);
  positive("prefillTokensPerSecondPrior");
  positive("ssdRestoreBytesPerSecondPrior");
  if (o.ssdDir !== null && (typeof o.ssdDir !== "string" || o.ssdDir === "")) {
    throw new RangeError("cache option ssdDir must be a directory path or null");
  }
  if (o.ssdFsync !== "batch" && o.ssdFsync !== "none") {
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
