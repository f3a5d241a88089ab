// What the handlers trace: a Generate call's generation trace (its span, the engine's phases replayed as
// child spans, restore batches, the first-token event), and the outcome of PrefillStream and KVBlocks
// calls (Lookup, GetBlocks, PutBlocks, Pin, Unpin), recorded on their RPC span.

import { SpanStatusCode, type Attributes, type HrTime, type Span } from "@opentelemetry/api";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { toConnectError } from "../rpc/call-end.js";
import type { Prompt } from "../../gen/kvpark/v1/common_pb.js";
import type { CacheReport, FromEngine, ModelInfo, PrefillProgress, SamplingSettings } from "../engine-ipc.js";
import * as sc from "./semconv.js";
import { grpcCodeName, rpcSpanKey, SERVER_FAULTS } from "./rpc-span.js";
import type { Telemetry } from "./telemetry.js";

export type Finished = Extract<FromEngine, { type: "finished" }>;

/** Epoch milliseconds (what the engine reports) as OpenTelemetry's [seconds, nanoseconds]. */
export function hrTime(epochMs: number): HrTime {
  const seconds = Math.floor(epochMs / 1000);
  return [seconds, Math.round((epochMs - seconds * 1000) * 1e6)];
}

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

/** Which tiers a restore read. */
export function restoreTier(report: CacheReport): string {
  const shared = report.sharedTokens ?? 0;
  const tiers = [report.ramTokens, report.ssdTokens, shared].filter((n) => n > 0).length;
  if (tiers > 1) return "mixed";
  return shared > 0 ? "shared" : report.ssdTokens > 0 ? "ssd" : "ram";
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
    sharedTokens: 0,
    recomputedTokens: 0,
    recomputeChosenTokens: 0,
    corruptBlocks: 0,
    divergedTokens: 0,
  };
  private output: string[] = [];
  private done = false;

  constructor(
    private readonly telemetry: Telemetry,
    private readonly ctx: Pick<HandlerContext, "values">,
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
      // Only on nodes whose requests used a shared tier, so the attributes of others stay as they were.
      ...(r.sharedTokens > 0 ? { [sc.ATTR_KVPARK_CACHE_SHARED_TOKENS]: r.sharedTokens } : {}),
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
        [sc.ATTR_KVPARK_RESTORE_RAM_MS]: activity.restoreStages.ramMs,
        [sc.ATTR_KVPARK_RESTORE_SSD_READ_WAIT_MS]: activity.restoreStages.ssdReadWaitMs,
        [sc.ATTR_KVPARK_RESTORE_SHARED_READ_WAIT_MS]: activity.restoreStages.sharedReadWaitMs,
        [sc.ATTR_KVPARK_RESTORE_VERIFY_MS]: activity.restoreStages.verifyMs,
        [sc.ATTR_KVPARK_RESTORE_STAGE_MS]: activity.restoreStages.stageMs,
        [sc.ATTR_KVPARK_RESTORE_IMPORT_MS]: activity.restoreStages.importMs,
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

/** Progress of a PrefillStream call, recorded on its RPC span as it completes. */
export function tracePrefillProgress(ctx: HandlerContext, progress: PrefillProgress): void {
  ctx.values.get(rpcSpanKey)?.setAttributes({
    [sc.ATTR_KVPARK_PREFILL_TOKENS_RECEIVED]: progress.tokensReceived,
    [sc.ATTR_KVPARK_PREFILL_TOKENS]: progress.tokensPrefilled,
    [sc.ATTR_KVPARK_PREFILL_TOKENS_REUSED]: progress.tokensReused,
    [sc.ATTR_KVPARK_PREFILL_BLOCKS_PERSISTED]: progress.blocksPersisted,
  });
}

function hex(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString("hex");
}

/** Key count and the first keys (hex) of a KVBlocks call. */
function keyAttributes(keys: readonly Uint8Array[]) {
  return {
    [sc.ATTR_KVPARK_BLOCKS_REQUESTED]: keys.length,
    [sc.ATTR_KVPARK_BLOCKS_KEYS]: keys.slice(0, sc.KEYS_RECORDED_MAX).map(hex),
  };
}

function tierOf(ram: number, ssd: number): string {
  if (ram > 0 && ssd > 0) return "mixed";
  if (ssd > 0) return "ssd";
  return ram > 0 ? "ram" : "none";
}

/** Records a Lookup's outcome on its RPC span. */
export function traceLookup(
  ctx: HandlerContext,
  promptTokens: number,
  r: { tokens: number; ramTokens: number; ssdTokens: number; blocks: unknown[] },
): void {
  ctx.values.get(rpcSpanKey)?.setAttributes({
    [sc.ATTR_KVPARK_LOOKUP_RESULT]: r.tokens > 0 ? "hit" : "miss",
    [sc.ATTR_KVPARK_LOOKUP_PROMPT_TOKENS]: promptTokens,
    [sc.ATTR_KVPARK_LOOKUP_CACHED_TOKENS]: r.tokens,
    [sc.ATTR_KVPARK_CACHE_RAM_TOKENS]: r.ramTokens,
    [sc.ATTR_KVPARK_CACHE_SSD_TOKENS]: r.ssdTokens,
    [sc.ATTR_KVPARK_LOOKUP_TIER]: tierOf(r.ramTokens, r.ssdTokens),
    [sc.ATTR_KVPARK_BLOCKS_FOUND]: r.blocks.length,
  });
}

/** Counts what a GetBlocks stream served; `end` writes the totals on the RPC span. */
export class GetBlocksTrace {
  private found = 0;
  private fromRam = 0;
  private fromSsd = 0;
  private missing = 0;
  private corrupt = 0;
  private bytes = 0;

  private constructor(private readonly span: Span) {}

  /** Undefined when the call is not traced, so the handler's per-block hook costs one `?.`. */
  static start(ctx: HandlerContext, keys: readonly Uint8Array[]): GetBlocksTrace | undefined {
    const span = ctx.values.get(rpcSpanKey);
    if (!span?.isRecording()) return undefined;
    span.setAttributes(keyAttributes(keys));
    return new GetBlocksTrace(span);
  }

  item(item: { block: { payload: Uint8Array }; tier: "ram" | "ssd" } | { error: { code: string } }): void {
    if ("block" in item) {
      this.found++;
      if (item.tier === "ram") this.fromRam++;
      else this.fromSsd++;
      this.bytes += item.block.payload.byteLength;
    } else if (item.error.code === "CORRUPT") this.corrupt++;
    else this.missing++;
  }

  end(): void {
    this.span.setAttributes({
      [sc.ATTR_KVPARK_BLOCKS_FOUND]: this.found,
      [sc.ATTR_KVPARK_BLOCKS_RAM]: this.fromRam,
      [sc.ATTR_KVPARK_BLOCKS_SSD]: this.fromSsd,
      [sc.ATTR_KVPARK_BLOCKS_MISSING]: this.missing,
      [sc.ATTR_KVPARK_BLOCKS_CORRUPT]: this.corrupt,
      [sc.ATTR_KVPARK_BLOCKS_CHECKSUM]: this.corrupt > 0 ? "failed" : "ok",
      [sc.ATTR_KVPARK_BLOCKS_BYTES]: this.bytes,
    });
  }
}

/** Records a PutBlocks call's outcome: blocks and bytes received, accepted, refused and why. */
export function tracePutBlocks(
  ctx: HandlerContext,
  received: { blocks: number; bytes: number },
  result: { accepted: number; rejected: { code: string }[] },
): void {
  ctx.values.get(rpcSpanKey)?.setAttributes({
    [sc.ATTR_KVPARK_BLOCKS_REQUESTED]: received.blocks,
    [sc.ATTR_KVPARK_BLOCKS_BYTES]: received.bytes,
    [sc.ATTR_KVPARK_BLOCKS_ACCEPTED]: result.accepted,
    [sc.ATTR_KVPARK_BLOCKS_REJECTED]: result.rejected.length,
    [sc.ATTR_KVPARK_BLOCKS_REJECTION_CODES]: [...new Set(result.rejected.map((r) => r.code))].sort(),
    [sc.ATTR_KVPARK_BLOCKS_CHECKSUM]: result.rejected.some((r) => r.code === "INVALID_PAYLOAD")
      ? "failed"
      : "ok",
  });
}

/** Records a Pin call's outcome. */
export function tracePin(
  ctx: HandlerContext,
  kind: string,
  r: { pinnedBlocks: number; missingKeys: unknown[]; hardPinnedBytes: number },
): void {
  ctx.values.get(rpcSpanKey)?.setAttributes({
    [sc.ATTR_KVPARK_PIN_KIND]: kind,
    [sc.ATTR_KVPARK_BLOCKS_PINNED]: r.pinnedBlocks,
    [sc.ATTR_KVPARK_BLOCKS_MISSING]: r.missingKeys.length,
    [sc.ATTR_KVPARK_PIN_HARD_BYTES]: r.hardPinnedBytes,
  });
}

/** Records an Unpin call's outcome. */
export function traceUnpin(ctx: HandlerContext, unpinnedBlocks: number): void {
  ctx.values.get(rpcSpanKey)?.setAttribute(sc.ATTR_KVPARK_BLOCKS_UNPINNED, unpinnedBlocks);
}
