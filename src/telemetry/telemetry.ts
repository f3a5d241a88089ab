import {
  metrics,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Counter,
  type Histogram,
  type HrTime,
  type Meter,
  type Span,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { Code, ConnectError, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { observeCallEnd } from "../rpc/call-end.js";
import { tenantKey } from "../auth.js";
import { toConnectError } from "../errors.js";
import type { Prompt } from "../../gen/kvpark/v1/common_pb.js";
import type { CacheStats } from "../cache/index.js";
import type { EngineHost } from "../engine/host.js";
import type {
  CacheReport,
  FromEngine,
  ModelInfo,
  PrefillProgress,
  SamplingSettings,
} from "../engine/protocol.js";
import * as sc from "./semconv.js";
import { rpcSpanKey } from "./rpc-span.js";

type Finished = Extract<FromEngine, { type: "finished" }>;

/** Epoch milliseconds (what the engine reports) as OpenTelemetry's [seconds, nanoseconds]. */
export function hrTime(epochMs: number): HrTime {
  const seconds = Math.floor(epochMs / 1000);
  return [seconds, Math.round((epochMs - seconds * 1000) * 1e6)];
}

const headerGetter: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

/** gRPC's canonical status name, e.g. INVALID_ARGUMENT, for error.type. */
export function grpcCodeName(code: number): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

// Server errors in the sense of the RPC conventions: the span is marked failed only for these; a
// client's bad argument or missing permission is the client's error, recorded by the status code.
const SERVER_FAULTS = new Set<number>([
  Code.Unknown,
  Code.DeadlineExceeded,
  Code.Unimplemented,
  Code.Internal,
  Code.Unavailable,
  Code.DataLoss,
]);

/** The semantic conventions' finish reasons: stop (a natural end) or length (a limit). */
const FINISH_REASONS: Record<Finished["reason"], string> = {
  eos: "stop",
  stop_string: "stop",
  max_tokens: "length",
  context_limit: "length",
};

/** A Generate request, as the handler knows it once it is validated. */
export interface GenerationStart {
  /** The prompt as the client sent it; its text is read only when content recording is on. */
  prompt: Prompt | undefined;
  /** A PrefillStream handle the prompt continues, or "". */
  handle: string;
  requestModel: string;
  sampling: SamplingSettings;
  info: ModelInfo;
  /** Epoch milliseconds at which the handler started. */
  arrivedAt: number;
}

interface Instruments {
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
}

function createInstruments(meter: Meter): Instruments {
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
  };
}

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
    this.meter
      .createObservableGauge(sc.METRIC_KVPARK_CACHE_HIT_RATIO, {
        unit: "1",
        description: "Share of prompt tokens served from the cache (RAM or SSD) since the server started.",
      })
      .addCallback((result) => {
        if (this.promptTokensSeen > 0) result.observe(this.promptTokensReused / this.promptTokensSeen);
      });
  }

  /** Outermost interceptor: a SERVER span and a duration metric per RPC. */
  interceptor(): Interceptor {
    return (next) => async (req) => {
      const service = req.service.typeName;
      const method = req.method.name;
      const parent = propagation.extract(ROOT_CONTEXT, req.header, headerGetter);
      const span = this.tracer.startSpan(
        `${service}/${method}`,
        {
          kind: SpanKind.SERVER,
          attributes: {
            [sc.ATTR_RPC_SYSTEM]: sc.RPC_SYSTEM_GRPC,
            [sc.ATTR_RPC_SERVICE]: service,
            [sc.ATTR_RPC_METHOD]: method,
          },
        },
        parent,
      );
      req.contextValues.set(rpcSpanKey, span);
      const started = performance.now();
      const end = (err?: unknown) => {
        // 0 is OK, which connect's Code enum leaves out.
        const code: number = err === undefined ? 0 : ConnectError.from(err).code;
        const attributes: Attributes = {
          [sc.ATTR_RPC_SYSTEM]: sc.RPC_SYSTEM_GRPC,
          [sc.ATTR_RPC_SERVICE]: service,
          [sc.ATTR_RPC_METHOD]: method,
          [sc.ATTR_RPC_GRPC_STATUS_CODE]: code,
        };
        if (code !== 0) attributes[sc.ATTR_ERROR_TYPE] = grpcCodeName(code);
        this.instruments.rpcDuration.record((performance.now() - started) / 1000, attributes);
        const tenant = req.contextValues.get(tenantKey);
        span.setAttribute(sc.ATTR_RPC_GRPC_STATUS_CODE, code);
        if (tenant) span.setAttribute(sc.ATTR_KVPARK_TENANT, tenant);
        if (code !== 0) {
          span.setAttribute(sc.ATTR_ERROR_TYPE, grpcCodeName(code));
          if (SERVER_FAULTS.has(code))
            span.setStatus({ code: SpanStatusCode.ERROR, message: ConnectError.from(err).rawMessage });
        }
        span.end();
      };
      return observeCallEnd(() => next(req), end);
    };
  }

  /** Starts the trace of one Generate call, a child of its RPC span. */
  generation(ctx: HandlerContext, start: GenerationStart): GenerationTrace {
    return new GenerationTrace(this, ctx, start);
  }

  /** Progress of a PrefillStream call, recorded on its RPC span as it completes. */
  prefillProgress(ctx: HandlerContext, progress: PrefillProgress): void {
    ctx.values.get(rpcSpanKey)?.setAttributes({
      "kvpark.prefill.tokens_received": progress.tokensReceived,
      [sc.ATTR_KVPARK_PREFILL_TOKENS]: progress.tokensPrefilled,
      "kvpark.prefill.tokens_reused": progress.tokensReused,
      "kvpark.prefill.blocks_persisted": progress.blocksPersisted,
    });
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
    i.promptTokens.add(report.recomputedTokens, { [sc.ATTR_KVPARK_CACHE_SOURCE]: "computed" });
    this.promptTokensSeen += usage.promptTokens;
    this.promptTokensReused += report.ramTokens + report.ssdTokens;
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
  observeCache(engine: EngineHost): void {
    const m = this.meter;
    const gauge = (name: string, unit: string, description: string) =>
      m.createObservableGauge(name, { unit, description });
    const counter = (name: string, unit: string, description: string) =>
      m.createObservableCounter(name, { unit, description });
    const size = gauge(sc.METRIC_KVPARK_CACHE_SIZE, "By", "Bytes held by each cache tier.");
    const sizeLimit = gauge(sc.METRIC_KVPARK_CACHE_SIZE_LIMIT, "By", "Byte budget of each cache tier.");
    const blocks = gauge(sc.METRIC_KVPARK_CACHE_BLOCKS, "{block}", "Blocks held by each cache tier.");
    const pinned = gauge(sc.METRIC_KVPARK_CACHE_PINNED_BLOCKS, "{block}", "Pinned blocks in each tier.");
    const hits = counter(
      sc.METRIC_KVPARK_CACHE_BLOCK_HITS,
      "{block}",
      "Block lookups answered by each tier.",
    );
    const misses = counter(sc.METRIC_KVPARK_CACHE_BLOCK_MISSES, "{block}", "Block lookups each tier missed.");
    const evictions = counter(sc.METRIC_KVPARK_CACHE_EVICTIONS, "{block}", "Blocks evicted from each tier.");
    const corrupt = counter(
      sc.METRIC_KVPARK_CACHE_CORRUPT_BLOCKS,
      "{block}",
      "Stored blocks that failed verification and were dropped.",
    );
    const writeErrors = counter(sc.METRIC_KVPARK_CACHE_WRITE_ERRORS, "{block}", "SSD writes that failed.");
    const writeSkips = counter(
      sc.METRIC_KVPARK_CACHE_WRITE_SKIPS,
      "{block}",
      "Blocks not written to SSD because the write queue was full.",
    );
    const queueDepth = gauge(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_DEPTH, "{block}", "Blocks waiting for SSD.");
    const queueSize = gauge(sc.METRIC_KVPARK_CACHE_WRITE_QUEUE_SIZE, "By", "Bytes waiting for SSD.");
    const observables = [size, sizeLimit, blocks, pinned, hits, misses, evictions, corrupt];
    observables.push(writeErrors, writeSkips, queueDepth, queueSize);
    m.addBatchObservableCallback(async (result) => {
      if (!engine.info) return;
      let s: CacheStats;
      try {
        s = await engine.kv<CacheStats>("", { op: "stats" }, AbortSignal.timeout(5000));
      } catch {
        return; // the cache is off, or the engine is restarting
      }
      for (const tier of ["ram", "ssd"] as const) {
        const t = s[tier];
        const a = { [sc.ATTR_KVPARK_CACHE_TIER]: tier };
        result.observe(size, t.bytes, a);
        result.observe(sizeLimit, t.bytesMax, a);
        result.observe(blocks, t.blocks, a);
        result.observe(pinned, t.pinnedBlocks, a);
        result.observe(hits, t.hits, a);
        result.observe(misses, t.misses, a);
        result.observe(evictions, t.evictions, a);
      }
      result.observe(corrupt, s.corruptBlocks);
      result.observe(writeErrors, s.writeErrors);
      result.observe(writeSkips, s.writeSkips);
      result.observe(queueDepth, s.writeQueueDepth);
      result.observe(queueSize, s.writeQueueBytes);
    }, observables);
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

/** Which tiers a restore read. */
function restoreTier(report: CacheReport): string {
  if (report.ramTokens > 0 && report.ssdTokens > 0) return "mixed";
  return report.ssdTokens > 0 ? "ssd" : "ram";
}

/**
 * The trace of one Generate call: a `{operation} {model}` span per the GenAI conventions, with child
 * spans for lookup, restore, prefill and decode placed at the instants the engine reported (the engine
 * runs in another process, so its phases are replayed here rather than traced there), an event at the
 * first token, and the request's metrics.
 */
export class GenerationTrace {
  private readonly span: Span;
  private readonly metricAttrs: Attributes;
  private report: CacheReport = {
    ramTokens: 0,
    ssdTokens: 0,
    recomputedTokens: 0,
    recomputeChosenTokens: 0,
    corruptBlocks: 0,
    divergedTokens: 0,
  };
  private output: string[] = [];
  private done = false;

  constructor(
    private readonly telemetry: Telemetry,
    private readonly ctx: HandlerContext,
    private readonly start: GenerationStart,
  ) {
    const kind = start.prompt?.kind;
    const promptKind = start.handle ? "handle" : (kind?.case ?? "text");
    const operation = kind?.case === "chat" ? sc.GEN_AI_OPERATION_CHAT : sc.GEN_AI_OPERATION_TEXT_COMPLETION;
    const requestModel = start.requestModel || start.info.name;
    this.metricAttrs = {
      [sc.ATTR_GEN_AI_OPERATION_NAME]: operation,
      [sc.ATTR_GEN_AI_PROVIDER_NAME]: sc.GEN_AI_PROVIDER_KVPARK,
      [sc.ATTR_GEN_AI_REQUEST_MODEL]: requestModel,
      [sc.ATTR_GEN_AI_RESPONSE_MODEL]: start.info.name,
    };
    const s = start.sampling;
    const attributes: Attributes = {
      ...this.metricAttrs,
      [sc.ATTR_GEN_AI_REQUEST_MAX_TOKENS]: s.maxTokens,
      [sc.ATTR_GEN_AI_REQUEST_TEMPERATURE]: s.temperature,
      [sc.ATTR_GEN_AI_REQUEST_TOP_P]: s.topP,
      [sc.ATTR_GEN_AI_REQUEST_TOP_K]: s.topK,
      [sc.ATTR_GEN_AI_REQUEST_SEED]: s.seed,
      [sc.ATTR_KVPARK_PROMPT_KIND]: promptKind,
    };
    if (s.stop.length > 0) attributes[sc.ATTR_GEN_AI_REQUEST_STOP_SEQUENCES] = s.stop;
    // Token-id prompts carry no text to record.
    const messages =
      kind?.case === "chat"
        ? kind.value.messages
        : kind?.case === "text"
          ? [{ role: "user", content: kind.value }]
          : undefined;
    if (telemetry.recordContent && messages) {
      attributes[sc.ATTR_GEN_AI_INPUT_MESSAGES] = JSON.stringify(
        messages.map((m) => ({ role: m.role, parts: [{ type: "text", content: m.content }] })),
      );
    }
    this.span = telemetry.startSpan(
      `${operation} ${requestModel}`,
      ctx.values.get(rpcSpanKey),
      hrTime(start.arrivedAt),
      attributes,
    );
  }

  /** The engine started: the cache report says where the prompt's KV came from. */
  started(report: CacheReport): void {
    this.report = report;
  }

  /** Generated text is kept only to be recorded, and only when content recording is on. */
  delta(text: string): void {
    if (this.telemetry.recordContent) this.output.push(text);
  }

  finished(ev: Finished): void {
    if (this.done) return;
    this.done = true;
    const { timings, usage, phases, activity, reason } = ev;
    const r = this.report;
    const span = this.span;
    const attrs: Attributes = {
      [sc.ATTR_GEN_AI_RESPONSE_FINISH_REASONS]: [FINISH_REASONS[reason]],
      [sc.ATTR_GEN_AI_USAGE_INPUT_TOKENS]: usage.promptTokens,
      [sc.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: usage.completionTokens,
      [sc.ATTR_GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS]: usage.cachedTokens,
      [sc.ATTR_KVPARK_FINISH_REASON]: reason,
      [sc.ATTR_KVPARK_CACHE_RAM_TOKENS]: r.ramTokens,
      [sc.ATTR_KVPARK_CACHE_SSD_TOKENS]: r.ssdTokens,
      [sc.ATTR_KVPARK_CACHE_RECOMPUTED_TOKENS]: r.recomputedTokens,
      [sc.ATTR_KVPARK_CACHE_RECOMPUTE_CHOSEN_TOKENS]: r.recomputeChosenTokens,
      [sc.ATTR_KVPARK_CACHE_CORRUPT_BLOCKS]: r.corruptBlocks,
      [sc.ATTR_KVPARK_CACHE_DIVERGED_TOKENS]: r.divergedTokens,
      [sc.ATTR_KVPARK_CACHE_DECISION]: activity.decision,
      [sc.ATTR_KVPARK_CACHE_BLOCKS_QUEUED]: activity.blocksQueued,
      [sc.ATTR_KVPARK_RESTORE_BLOCKS]: activity.blocksRestored,
      [sc.ATTR_KVPARK_RESTORE_SSD_BYTES]: activity.ssdBytes,
      [sc.ATTR_KVPARK_RESTORE_MS]: timings.restoreMs,
      [sc.ATTR_KVPARK_RESTORE_ESTIMATED_MS]: activity.estimatedRestoreMs,
      [sc.ATTR_KVPARK_RECOMPUTE_ESTIMATED_MS]: activity.estimatedRecomputeMs,
      [sc.ATTR_KVPARK_LOOKUP_MS]: timings.lookupMs,
      [sc.ATTR_KVPARK_PREFILL_MS]: timings.prefillMs,
      [sc.ATTR_KVPARK_TTFT_MS]: timings.ttftMs,
      [sc.ATTR_KVPARK_QUEUE_MS]: timings.queueMs,
      [sc.ATTR_KVPARK_TOTAL_MS]: timings.totalMs,
      [sc.ATTR_KVPARK_DECODE_TOKENS_PER_SECOND]: timings.decodeTokensPerSecond,
    };
    if (this.telemetry.recordContent) {
      attrs[sc.ATTR_GEN_AI_OUTPUT_MESSAGES] = JSON.stringify([
        {
          role: "assistant",
          parts: [{ type: "text", content: this.output.join("") }],
          finish_reason: FINISH_REASONS[reason],
        },
      ]);
    }
    span.setAttributes(attrs);

    const child = (name: string, from: number, to: number, attributes: Attributes, parent = span) => {
      const c = this.telemetry.startSpan(name, parent, hrTime(from), attributes);
      c.end(hrTime(to));
      return c;
    };
    if (phases.lookupEndAt > 0)
      child(sc.SPAN_LOOKUP, phases.startedAt, phases.lookupEndAt, {
        [sc.ATTR_KVPARK_LOOKUP_MS]: timings.lookupMs,
      });
    if (phases.restoreEndAt > 0) {
      const restore = child(sc.SPAN_RESTORE, phases.lookupEndAt, phases.restoreEndAt, {
        [sc.ATTR_KVPARK_RESTORE_TIER]: restoreTier(r),
        [sc.ATTR_KVPARK_CACHE_RAM_TOKENS]: r.ramTokens,
        [sc.ATTR_KVPARK_CACHE_SSD_TOKENS]: r.ssdTokens,
        [sc.ATTR_KVPARK_RESTORE_BLOCKS]: activity.blocksRestored,
        [sc.ATTR_KVPARK_RESTORE_SSD_BYTES]: activity.ssdBytes,
        [sc.ATTR_KVPARK_RESTORE_MS]: timings.restoreMs,
        [sc.ATTR_KVPARK_CACHE_DECISION]: activity.decision,
        [sc.ATTR_KVPARK_CACHE_CORRUPT_BLOCKS]: r.corruptBlocks,
      });
      for (const b of activity.restoreBatches) {
        child(
          sc.SPAN_RESTORE_BATCH,
          b.startAt,
          b.endAt,
          {
            [sc.ATTR_KVPARK_RESTORE_TIER]: b.tier,
            [sc.ATTR_KVPARK_RESTORE_BLOCKS]: b.blocks,
            [sc.ATTR_KVPARK_RESTORE_BATCH_TOKENS]: b.tokens,
            [sc.ATTR_KVPARK_RESTORE_BATCH_BYTES]: b.bytes,
            [sc.ATTR_KVPARK_RESTORE_BATCH_MS]: b.endAt - b.startAt,
          },
          restore,
        );
      }
    }
    if (phases.firstTokenAt > 0) {
      const prefillFrom = phases.restoreEndAt || phases.lookupEndAt || phases.startedAt;
      child(sc.SPAN_PREFILL, prefillFrom, phases.firstTokenAt, {
        [sc.ATTR_KVPARK_PREFILL_TOKENS]: r.recomputedTokens,
        [sc.ATTR_KVPARK_PREFILL_MS]: timings.prefillMs,
      });
      child(sc.SPAN_DECODE, phases.firstTokenAt, phases.endAt, {
        [sc.ATTR_GEN_AI_USAGE_OUTPUT_TOKENS]: usage.completionTokens,
        [sc.ATTR_KVPARK_DECODE_TOKENS_PER_SECOND]: timings.decodeTokensPerSecond,
      });
      span.addEvent(
        sc.EVENT_FIRST_TOKEN,
        { [sc.ATTR_KVPARK_TTFT_MS]: timings.ttftMs },
        hrTime(phases.firstTokenAt),
      );
    }
    span.end();
    this.telemetry.recordFinished(this.metricAttrs, r, ev);
  }

  /** The call failed (or the client left) before the engine finished it. */
  failed(err: unknown): void {
    if (this.done) return;
    this.done = true;
    const code = toConnectError(err).code;
    const errorType = grpcCodeName(code);
    this.span.setAttribute(sc.ATTR_ERROR_TYPE, errorType);
    if (SERVER_FAULTS.has(code)) this.span.setStatus({ code: SpanStatusCode.ERROR, message: errorType });
    this.span.end();
    this.telemetry.recordFailed(this.metricAttrs, (Date.now() - this.start.arrivedAt) / 1000, errorType);
  }

  /** Ends a trace whose stream was closed early (the client cancelled); no-op after finished/failed. */
  close(): void {
    this.failed(new ConnectError("the client cancelled the call", Code.Canceled));
  }
}
