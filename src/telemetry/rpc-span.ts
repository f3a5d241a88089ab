import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Span } from "@opentelemetry/api";
import * as sc from "./semconv.js";

/**
 * The server span of the current RPC, handed from the tracing interceptor to the handler through the
 * call's context values. Handlers stream through async generators that connect drives from its own
 * async context, so the active-span context of AsyncLocalStorage would not reliably reach them.
 */
export const rpcSpanKey = createContextKey<Span | undefined>(undefined, { description: "RPC server span" });

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
