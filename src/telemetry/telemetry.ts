import {
  metrics,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  type Attributes,
  type HrTime,
  type Meter,
  type Span,
  type Tracer,
} from "@opentelemetry/api";
import type { HandlerContext, Interceptor } from "@connectrpc/connect";
import type { CacheStats } from "../cache/index.js";
import type { EngineClient } from "../frontend/engine-client.js";
import type { CacheReport, PrefillProgress } from "../engine-ipc.js";
import * as sc from "./semconv.js";
import {
  createCacheInstruments,
  createSharedInstruments,
  createEngineInstruments,
  createInstruments,
  type Instruments,
} from "./instruments.js";
import { endHttpSpan, rpcInterceptor, startHttpSpan } from "./rpc-span.js";
import {
  GenerationTrace,
  restoreTier,
  tracePrefillProgress,
  type Finished,
  type GenerationStart,
} from "./traces.js";

/**
 * kvpark's telemetry, wired into the server: an interceptor that opens a server span per RPC (continuing
 * the caller's W3C trace context), a generation trace per Generate call built from the engine's events,
 * and the metrics. Created only when telemetry is on; every hook in the handlers is behind `?.`.
 */
export class Telemetry {
  readonly recordContent: boolean;
  private readonly tracer: Tracer;
  private readonly meter: Meter;
  private readonly instruments: Instruments;
  private readonly shutdownSdk: () => Promise<void>;
  /** Prompt tokens seen and reused since start, for the hit-ratio gauge. */
  private promptTokensSeen = 0;
  private promptTokensReused = 0;

  constructor(options: {
    recordContent: boolean;
    tracing: boolean;
    metrics: boolean;
    shutdown: () => Promise<void>;
  }) {
    this.recordContent = options.recordContent;
    this.tracer = trace.getTracer("kvpark");
    this.meter = metrics.getMeter("kvpark");
    this.instruments = createInstruments(this.meter);
    this.shutdownSdk = options.shutdown;
    this.instruments.hitRatio.addCallback((result) => {
      if (this.promptTokensSeen > 0) result.observe(this.promptTokensReused / this.promptTokensSeen);
    });
  }

  /** Outermost interceptor: a SERVER span and a duration metric per RPC. */
  interceptor(): Interceptor {
    return rpcInterceptor(this.tracer, this.instruments.rpcDuration);
  }

  /** A SERVER span for one call of the HTTP APIs; `end` records its response status and ends it. */
  httpSpan(
    method: string,
    route: string,
    headers: Record<string, string | string[] | undefined>,
  ): { span: Span; end: (status: number) => void } {
    const span = startHttpSpan(this.tracer, method, route, headers);
    return { span, end: (status) => endHttpSpan(span, status) };
  }

  /** Starts the trace of one Generate call, a child of its RPC span. */
  generation(ctx: Pick<HandlerContext, "values">, start: GenerationStart): GenerationTrace {
    return new GenerationTrace(this, ctx, start);
  }

  /** Progress of a PrefillStream call, recorded on its RPC span as it completes. */
  prefillProgress(ctx: HandlerContext, progress: PrefillProgress): void {
    tracePrefillProgress(ctx, progress);
  }

  /** @internal Used by GenerationTrace. */
  startSpan(name: string, parent: Span | undefined, startTime: HrTime, attributes: Attributes): Span {
    const ctx = parent ? trace.setSpan(ROOT_CONTEXT, parent) : ROOT_CONTEXT;
    return this.tracer.startSpan(name, { kind: SpanKind.INTERNAL, startTime, attributes }, ctx);
  }

  /** @internal Records the metrics of a finished generation. */
  recordFinished(attrs: Attributes, report: CacheReport, ev: Finished): void {
    const i = this.instruments;
    const { timings, usage, activity } = ev;
    i.ttft.record(timings.ttftMs / 1000, attrs);
    if (timings.decodeTokensPerSecond > 0) i.tpot.record(1 / timings.decodeTokensPerSecond, attrs);
    i.requestDuration.record(timings.totalMs / 1000, attrs);
    i.tokenUsage.record(usage.promptTokens, {
      ...attrs,
      [sc.ATTR_GEN_AI_TOKEN_TYPE]: sc.GEN_AI_TOKEN_TYPE_INPUT,
    });
    i.tokenUsage.record(usage.completionTokens, {
      ...attrs,
      [sc.ATTR_GEN_AI_TOKEN_TYPE]: sc.GEN_AI_TOKEN_TYPE_OUTPUT,
    });
    i.promptTokens.add(report.ramTokens, { [sc.ATTR_KVPARK_CACHE_SOURCE]: "ram" });
    i.promptTokens.add(report.ssdTokens, { [sc.ATTR_KVPARK_CACHE_SOURCE]: "ssd" });
    if (report.sharedTokens > 0)
      i.promptTokens.add(report.sharedTokens, { [sc.ATTR_KVPARK_CACHE_SOURCE]: "shared" });
    i.promptTokens.add(report.recomputedTokens, { [sc.ATTR_KVPARK_CACHE_SOURCE]: "computed" });
    this.promptTokensSeen += usage.promptTokens;
    this.promptTokensReused += report.ramTokens + report.ssdTokens + report.sharedTokens;
    i.decisions.add(1, { [sc.ATTR_KVPARK_CACHE_DECISION]: activity.decision });
    if (activity.blocksRestored > 0) {
      const tier = { [sc.ATTR_KVPARK_RESTORE_TIER]: restoreTier(report) };
      i.restoreDuration.record(timings.restoreMs / 1000, tier);
      if (activity.ssdBytes > 0) {
        i.restoreSsdSize.record(activity.ssdBytes, tier);
        if (timings.restoreMs > 0)
          i.restoreThroughput.record(activity.ssdBytes / (timings.restoreMs / 1000), tier);
      }
    }
  }

  /** @internal Records the duration of a failed generation. */
  recordFailed(attrs: Attributes, seconds: number, errorType: string): void {
    this.instruments.requestDuration.record(seconds, { ...attrs, [sc.ATTR_ERROR_TYPE]: errorType });
  }

  /**
   * Cache gauges and counters read from the engine's cache statistics at each collection. Nothing is
   * observed while the engine starts or when the cache is off, rather than zeros that would read as an
   * empty cache.
   */
  observeCache(engine: EngineClient): void {
    const m = this.meter;
    const c = createCacheInstruments(m);
    const sh = createSharedInstruments(m);
    m.addBatchObservableCallback(
      async (result) => {
        if (!engine.info) return;
        let s: CacheStats;
        try {
          s = await engine.stats("", true, AbortSignal.timeout(5000));
        } catch {
          return; // the cache is off, or the engine is restarting
        }
        for (const tier of ["ram", "ssd"] as const) {
          const t = s[tier];
          const a = { [sc.ATTR_KVPARK_CACHE_TIER]: tier };
          result.observe(c.size, t.bytes, a);
          result.observe(c.sizeLimit, t.bytesMax, a);
          result.observe(c.blocks, t.blocks, a);
          result.observe(c.pinned, t.pinnedBlocks, a);
          result.observe(c.hits, t.hits, a);
          result.observe(c.misses, t.misses, a);
          result.observe(c.evictions, t.evictions, a);
        }
        result.observe(c.corrupt, s.corruptBlocks);
        // Write errors by cause: a full disk wants space, an I/O error a look at the device.
        result.observe(c.writeErrors, s.writeErrorsEnospc, { [sc.ATTR_ERROR_TYPE]: "ENOSPC" });
        result.observe(c.writeErrors, s.writeErrorsEio, { [sc.ATTR_ERROR_TYPE]: "EIO" });
        result.observe(c.writeErrors, s.writeErrorsOther, { [sc.ATTR_ERROR_TYPE]: "other" });
        result.observe(c.writeSkips, s.writeSkips);
        result.observe(c.queueDepth, s.writeQueueDepth);
        result.observe(c.queueSize, s.writeQueueBytes);
        const t = s.shared;
        if (t) {
          result.observe(sh.connected, t.connected ? 1 : 0);
          result.observe(sh.hits, t.hits);
          result.observe(sh.misses, t.misses);
          const dir = sc.ATTR_KVPARK_CACHE_SHARED_DIRECTION;
          result.observe(sh.io, t.readBytes, { [dir]: "read" });
          result.observe(sh.io, t.writtenBytes, { [dir]: "write" });
          const err = sc.ATTR_ERROR_TYPE;
          result.observe(sh.errors, t.readErrors, { [err]: "read" });
          result.observe(sh.errors, t.writeErrors, { [err]: "write" });
          result.observe(sh.errors, t.timeouts, { [err]: "timeout" });
          result.observe(sh.errors, t.rejectedBlocks, { [err]: "rejected" });
          result.observe(sh.errors, t.lostBlocks, { [err]: "lost" });
          result.observe(sh.writeSkips, t.writeSkips);
          result.observe(sh.queueDepth, t.writeQueueDepth);
          result.observe(sh.requests, t.requests);
          result.observe(sh.requestTime, t.requestMs / 1000);
        }
      },
      [...Object.values(c), ...Object.values(sh)],
    );
    // The engine's gauges come with the cache's: the front end wires one call for both.
    this.observeEngine(engine);
  }

  /**
   * The engine's gauges, read from its last report (`engine.engineStats`) without a round trip to the
   * engine. Nothing is observed before its first report or while it restarts (the report is cleared
   * then), rather than zeros that would read as an idle engine without memory.
   */
  observeEngine(engine: Pick<EngineClient, "engineStats">): void {
    const m = this.meter;
    const g = createEngineInstruments(m);
    m.addBatchObservableCallback((result) => {
      const e = engine.engineStats;
      if (!e) return;
      result.observe(g.rss, e.rssBytes);
      result.observe(g.limit, e.memoryMaxBytes);
      result.observe(g.reserved, e.memoryReservedBytes);
      const state = sc.ATTR_KVPARK_ENGINE_SEQUENCE_STATE;
      result.observe(g.sequences, e.sequencesRunning, { [state]: sc.ENGINE_SEQUENCE_STATE_RUNNING });
      result.observe(g.sequences, e.sequencesWaiting, { [state]: sc.ENGINE_SEQUENCE_STATE_WAITING });
      result.observe(g.decodeBatch, e.decodeBatch);
      // Engines of an older build (during a rolling restart) do not report these.
      if (e.heapUsedBytes !== undefined) result.observe(g.heapUsed, e.heapUsedBytes);
      if (e.allocatorKeptBytes !== undefined) result.observe(g.kept, e.allocatorKeptBytes);
      if (e.allocatorPurges !== undefined) result.observe(g.purges, e.allocatorPurges);
      const stat = sc.ATTR_KVPARK_ENGINE_EVENTLOOP_STAT;
      if (e.eventLoopDelayMeanMs !== undefined)
        result.observe(g.eventLoopDelay, e.eventLoopDelayMeanMs / 1000, { [stat]: "mean" });
      if (e.eventLoopDelayP99Ms !== undefined)
        result.observe(g.eventLoopDelay, e.eventLoopDelayP99Ms / 1000, { [stat]: "p99" });
      if (e.eventLoopDelayMaxMs !== undefined)
        result.observe(g.eventLoopDelay, e.eventLoopDelayMaxMs / 1000, { [stat]: "max" });
    }, Object.values(g));
  }

  /** Flushes what is buffered and stops the exporters; bounded so a dead collector cannot hold up exit. */
  async shutdown(timeoutMs = 5000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.shutdownSdk().catch(() => undefined),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
  }
}
