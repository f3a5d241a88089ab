// The server's configuration: its fields and the choices of its enumerated options. The table
// that gives each its flag, default, bounds and help is in config-options.ts; config.ts re-exports
// these.

/** Levels of --log-level (pino's). */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;
/** Modes of --ssd-fsync. */
export const FSYNC_MODES = ["batch", "none"] as const;
/** Policies of --cache-admission; see AdmissionPolicy in src/cache/config.ts. */
export const ADMISSION_POLICIES = ["all", "reused", "pinned"] as const;
/** Allocators of --engine-allocator; see src/engine/allocator.ts. */
export const ENGINE_ALLOCATORS = ["jemalloc", "system"] as const;
/** Modes of --telemetry. */
export const TELEMETRY_MODES = ["auto", "on", "off"] as const;

/** Every limit and default of the server, in one place. */
export interface Config {
  host: string;
  port: number;
  model: string;
  modelName: string;
  dataDir: string;
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  authTokens: string;
  adminTokens: string;
  corsOrigins: string;
  console: boolean;
  messageBytesMax: number;
  keepaliveMs: number;
  keepaliveTimeoutMs: number;
  shutdownGraceMs: number;
  logLevel: (typeof LOG_LEVELS)[number];
  maxTokensDefault: number;
  maxTokensLimit: number;
  requestsMax: number;
  tenantRequestsMax: number;
  prefillIdleSeconds: number;
  tokenizerWorkers: number;
  prefillChunkTokens: number;
  stepTokensMax: number;
  engineMemoryMax: number;
  engineRestartDelayMs: number;
  engineAllocator: (typeof ENGINE_ALLOCATORS)[number];
  engineIdlePurgeMs: number;
  engineKeptBytesMax: number;
  residentSequence: boolean;
  testEngineAbort: boolean;
  cache: boolean;
  blockTokens: number;
  ramBytesMax: number;
  ssdBytesMax: number;
  ssdFsync: (typeof FSYNC_MODES)[number];
  cacheAdmission: (typeof ADMISSION_POLICIES)[number];
  writeQueueBlocksMax: number;
  hardPinQuotaBytes: number;
  softPinTtlSeconds: number;
  softPinTtlMaxSeconds: number;
  costModel: boolean;
  sharedTier: string;
  sharedTierCluster: boolean;
  sharedTierTimeoutMs: number;
  sharedTierTtlSeconds: number;
  sharedTierAdmission: (typeof ADMISSION_POLICIES)[number];
  sharedTierWriteQueueBlocksMax: number;
  handlesMax: number;
  handleTtlSeconds: number;
  telemetry: (typeof TELEMETRY_MODES)[number];
  telemetryRecordContent: boolean;
  metricsPort: number;
  metricsHost: string;
}
