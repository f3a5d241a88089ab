// Every metric instrument kvpark records, with its unit, description and (for histograms) explicit bucket
// boundaries. Names and buckets come from semconv.ts; what is recorded, and when, is up to Telemetry.

import type { Counter, Histogram, Meter, ObservableGauge } from "@opentelemetry/api";
import * as sc from "./semconv.js";

/** The instruments of requests and calls, recorded as they end. */
export interface Instruments {
  ttft: Histogram;
  tpot: Histogram;
  requestDuration: Histogram;
  tokenUsage: Histogram;
  promptTokens: Counter;
  decisions: Counter;
  restoreDuration: Histogram;
  restoreSsdSize: Histogram;
  restoreThroughput: Histogram;
  rpcDuration: Histogram;
  /** Observed from the prompt tokens seen and reused since start. */
  hitRatio: ObservableGauge;
}

export function createInstruments(meter: Meter): Instruments {
  const histogram = (name: string, unit: string, description: string, buckets: readonly number[]) =>
    meter.createHistogram(name, { unit, description, advice: { explicitBucketBoundaries: [...buckets] } });
  return {
    ttft: histogram(
      sc.METRIC_GEN_AI_SERVER_TIME_TO_FIRST_TOKEN,
      "s",
      "Time from the request's arrival to its first generated token.",
      sc.BUCKETS.timeToFirstToken,
    ),
    tpot: histogram(
      sc.METRIC_GEN_AI_SERVER_TIME_PER_OUTPUT_TOKEN,
      "s",
      "Decode time per output token after the first.",
      sc.BUCKETS.timePerOutputToken,
    ),
    requestDuration: histogram(
      sc.METRIC_GEN_AI_SERVER_REQUEST_DURATION,
      "s",
      "Time from the request's arrival to its last token or its failure.",
      sc.BUCKETS.requestDuration,
    ),
    tokenUsage: histogram(
      sc.METRIC_KVPARK_TOKEN_USAGE,
      "{token}",
      "Input and output tokens per request.",
      sc.BUCKETS.tokens,
    ),
    promptTokens: meter.createCounter(sc.METRIC_KVPARK_CACHE_PROMPT_TOKENS, {
      unit: "{token}",
      description: "Prompt tokens by where their KV came from: ram, ssd (reused) or computed.",
    }),
    decisions: meter.createCounter(sc.METRIC_KVPARK_CACHE_DECISIONS, {
      unit: "{request}",
      description: "Requests by what the cost model did with the cached prefix: restore, recompute, none.",
    }),
    restoreDuration: histogram(
      sc.METRIC_KVPARK_CACHE_RESTORE_DURATION,
      "s",
      "Time to restore a request's cached prefix, by the tiers it came from.",
      sc.BUCKETS.restoreDuration,
    ),
    restoreSsdSize: histogram(
      sc.METRIC_KVPARK_CACHE_RESTORE_SSD_SIZE,
      "By",
      "Bytes read from the SSD tier by one restore.",
      sc.BUCKETS.restoreBytes,
    ),
    restoreThroughput: histogram(
      sc.METRIC_KVPARK_CACHE_RESTORE_THROUGHPUT,
      "By/s",
      "SSD bytes restored per second of restore time.",
      sc.BUCKETS.restoreThroughput,
    ),
    rpcDuration: histogram(
      sc.METRIC_RPC_SERVER_CALL_DURATION,
      "s",
      "Duration of every RPC, by service, method and status code.",
      sc.BUCKETS.rpcDuration,
    ),
    hitRatio: meter.createObservableGauge(sc.METRIC_KVPARK_CACHE_HIT_RATIO, {
      unit: "1",
      description: "Share of prompt tokens served from the cache (RAM or SSD) since the server started.",
    }),
  };
}

/**
 * The cache's gauges and counters, observed from the engine's cache statistics at each collection: what
 * each tier holds (by kvpark.cache.tier), and the cache's totals since start.
 */
export function createCacheInstruments(meter: Meter) {
  const gauge = (name: string, unit: string, description: string) =>
    meter.createObservableGauge(name, { unit, description });
  const counter = (name: string, unit: string, description: string) =>
    meter.createObservableCounter(name, { unit, description });
  return {
    size: gauge(sc.METRIC_KVPARK_CACHE_SIZE, "By", "Bytes held by each cache tier."),
    sizeLimit: gauge(sc.METRIC_KVPARK_CACHE_SIZE_LIMIT, "By", "Byte budget of each cache tier."),
    blocks: gauge(sc.METRIC_KVPARK_CACHE_BLOCKS, "{block}", "Blocks held by each cache tier."),
    pinned: gauge(sc.METRIC_KVPARK_CACHE_PINNED_BLOCKS, "{block}", "Pinned blocks in each tier."),
    hits: counter(sc.METRIC_KVPARK_CACHE_BLOCK_HITS, "{block}", "Block lookups answered by each tier."),
    misses: counter(sc.METRIC_KVPARK_CACHE_BLOCK_MISSES, "{block}", "Block lookups each tier missed."),
    evictions: counter(sc.METRIC_KVPARK_CACHE_EVICTIONS, "{block}", "Blocks evicted from each tier."),
    corrupt: counter(
      sc.METRIC_KVPARK_CACHE_CORRUPT_BLOCKS,
      "{block}",
      "Stored blocks that failed verification and were dropped.",
    ),
    writeErrors: counter(
      sc.METRIC_KVPARK_CACHE_WRITE_ERRORS,
      "{block}",
      "SSD writes that failed, by cause (error.type: ENOSPC, EIO, other).",
    ),
    writeSkips: counter(
      sc.METRIC_KVPARK_CACHE_WRITE_SKIPS,
      "{block}",
      "Blocks not written to SSD because the write queue was full.",
    ),
    queueDepth: gauge(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_DEPTH, "{block}", "Blocks waiting for SSD."),
    queueSize: gauge(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_SIZE, "By", "Bytes waiting for SSD."),
  };
}

/** The shared tier's instruments (--shared-tier), observed from its counters in the cache's stats. */
export function createSharedInstruments(meter: Meter) {
  const gauge = (name: string, unit: string, description: string) =>
    meter.createObservableGauge(name, { unit, description });
  const counter = (name: string, unit: string, description: string) =>
    meter.createObservableCounter(name, { unit, description });
  return {
    connected: gauge(
      sc.METRIC_KVPARK_CACHE_SHARED_CONNECTED,
      "1",
      "1 while the client is connected to Redis, else 0.",
    ),
    hits: counter(sc.METRIC_KVPARK_CACHE_SHARED_HITS, "{block}", "Blocks lookups found in the shared tier."),
    misses: counter(
      sc.METRIC_KVPARK_CACHE_SHARED_MISSES,
      "{lookup}",
      "Lookups that reached the shared tier and found nothing more there.",
    ),
    io: counter(sc.METRIC_KVPARK_CACHE_SHARED_IO, "By", "Bytes read from and written to the shared tier."),
    errors: counter(
      sc.METRIC_KVPARK_CACHE_SHARED_ERRORS,
      "{event}",
      "Shared-tier failures by error.type: read, write, timeout, rejected (failed verification), lost.",
    ),
    writeSkips: counter(
      sc.METRIC_KVPARK_CACHE_SHARED_WRITE_SKIPS,
      "{block}",
      "Blocks not written to the shared tier because its write queue was full.",
    ),
    queueDepth: gauge(
      sc.METRIC_KVPARK_CACHE_SHARED_WRITE_QUEUE_DEPTH,
      "{block}",
      "Blocks waiting for their shared-tier write.",
    ),
    requests: counter(sc.METRIC_KVPARK_CACHE_SHARED_REQUESTS, "{request}", "Round trips to Redis."),
    requestTime: counter(
      sc.METRIC_KVPARK_CACHE_SHARED_REQUEST_TIME,
      "s",
      "Total time of the round trips to Redis (over requests: the mean latency).",
    ),
  };
}

/** The cache's instruments, as observeCache reports them. */
export type CacheInstruments = ReturnType<typeof createCacheInstruments>;

/**
 * The engine's gauges, observed from its last report (EngineStats, about once a second): its resident
 * memory against the bound it admits work under, the sequences it runs and holds back, and its decode
 * batch.
 */
export function createEngineInstruments(meter: Meter) {
  const gauge = (name: string, unit: string, description: string) =>
    meter.createObservableGauge(name, { unit, description });
  return {
    rss: gauge(sc.METRIC_KVPARK_ENGINE_MEMORY_RSS, "By", "Resident set size of the engine process."),
    limit: gauge(
      sc.METRIC_KVPARK_ENGINE_MEMORY_LIMIT,
      "By",
      "The engine's memory budget (--engine-memory-max, or weights + RAM tier + 2 GiB).",
    ),
    reserved: gauge(
      sc.METRIC_KVPARK_ENGINE_MEMORY_RESERVED,
      "By",
      "Bytes of the budget taken: weights, the RAM tier's budget and admitted sequences' work.",
    ),
    sequences: gauge(
      sc.METRIC_KVPARK_ENGINE_SEQUENCES,
      "{sequence}",
      "Sequences admitted (running: restoring, prefilling or decoding) and waiting for memory.",
    ),
    decodeBatch: gauge(
      sc.METRIC_KVPARK_ENGINE_DECODE_BATCH_SIZE,
      "{sequence}",
      "Sequences in the engine's most recent batched decode step.",
    ),
    kept: gauge(
      sc.METRIC_KVPARK_ENGINE_MEMORY_KEPT,
      "By",
      "With jemalloc: freed pages the engine keeps resident for reuse (see --engine-kept-bytes-max).",
    ),
    purges: meter.createObservableCounter(sc.METRIC_KVPARK_ENGINE_MEMORY_PURGES, {
      unit: "{purge}",
      description:
        "With jemalloc: times the engine's kept pages went back to the kernel (idle, or over the bound).",
    }),
    heapUsed: gauge(sc.METRIC_KVPARK_ENGINE_HEAP_USED, "By", "V8 heap in use in the engine process."),
    eventLoopDelay: gauge(
      sc.METRIC_KVPARK_ENGINE_EVENTLOOP_DELAY,
      "s",
      "The engine's event-loop delay over its last report's window, by statistic (mean, p99, max).",
    ),
  };
}
