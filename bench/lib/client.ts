import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { create } from "@bufbuild/protobuf";
import { Health } from "../../gen/grpc/health/v1/health_pb";
import {
  GenerateRequestSchema,
  InferenceService,
  type CacheReport,
  TimingsSchema,
  type Timings,
} from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService, type StatsResponse } from "../../gen/kvpark/v1/kvblocks_pb";
import { sleep } from "./util";

export interface Clients {
  inference: Client<typeof InferenceService>;
  kv: Client<typeof KVBlocksService>;
  health: Client<typeof Health>;
}

export function connect(url: string): Clients {
  // No deadline: a cold 8k-token prefill on two cores takes minutes.
  const transport = createGrpcTransport({ baseUrl: url });
  return {
    inference: createClient(InferenceService, transport),
    kv: createClient(KVBlocksService, transport),
    health: createClient(Health, transport),
  };
}

/** A prompt as token ids or as chat messages. */
export type BenchPrompt = { tokens: number[] } | { chat: Array<{ role: string; content: string }> };

export interface GenerateOptions {
  maxTokens: number;
  persist?: boolean;
  signal?: AbortSignal;
  /** Called with the arrival time of every delta that carries tokens, as it arrives. */
  onDelta?: (now: number, tokens: number) => void;
}

/** One Generate call as the client saw it, with the server's own report. */
export interface GenerateResult {
  promptTokens: number;
  cache: Pick<
    CacheReport,
    | "ramTokens"
    | "ssdTokens"
    | "sharedTokens"
    | "recomputedTokens"
    | "recomputeChosenTokens"
    | "corruptBlocks"
  >;
  completionIds: number[];
  finishReason: number;
  /** Server-side timings (from the request's arrival at the server). */
  timings: BenchTimings;
  /** Client-side: from the call to the first generated token received, and to the stream's end. */
  clientTtftMs: number;
  clientTotalMs: number;
  /** performance.now() of the first and of every later token received (for concurrency windows). */
  tokenTimes: number[];
  /** performance.now() of every delta that carried tokens, and how many it carried (inter-token latency). */
  deltaTimes: number[];
  deltaTokens: number[];
}

/** Every field of the server's Timings, as plain numbers. */
export type BenchTimings = Omit<Timings, "$typeName" | "$unknown">;

function noTimings(): BenchTimings {
  const { $typeName: _, $unknown: __, ...zeros } = create(TimingsSchema);
  return zeros;
}

/** Greedy generation (temperature 0), streamed; times measured on the client too. */
export async function generate(
  c: Clients,
  prompt: BenchPrompt,
  options: GenerateOptions,
): Promise<GenerateResult> {
  const req = create(GenerateRequestSchema, {
    prompt:
      "tokens" in prompt
        ? { kind: { case: "tokens", value: { ids: prompt.tokens } } }
        : { kind: { case: "chat", value: { messages: prompt.chat } } },
    sampling: { maxTokens: options.maxTokens, temperature: 0 },
    cache: { persist: options.persist ?? true },
  });
  const t0 = performance.now();
  const out: GenerateResult = {
    promptTokens: 0,
    cache: {
      ramTokens: 0,
      ssdTokens: 0,
      sharedTokens: 0,
      recomputedTokens: 0,
      recomputeChosenTokens: 0,
      corruptBlocks: 0,
    },
    completionIds: [],
    finishReason: 0,
    timings: noTimings(),
    clientTtftMs: Number.NaN,
    clientTotalMs: 0,
    tokenTimes: [],
    deltaTimes: [],
    deltaTokens: [],
  };
  for await (const res of c.inference.generate(req, { signal: options.signal })) {
    const ev = res.event;
    if (ev.case === "started") {
      out.promptTokens = ev.value.promptTokens;
      const cache = ev.value.cache;
      if (cache) {
        out.cache = {
          ramTokens: cache.ramTokens,
          ssdTokens: cache.ssdTokens,
          sharedTokens: cache.sharedTokens,
          recomputedTokens: cache.recomputedTokens,
          recomputeChosenTokens: cache.recomputeChosenTokens,
          corruptBlocks: cache.corruptBlocks,
        };
      }
    } else if (ev.case === "delta") {
      const now = performance.now();
      for (let i = 0; i < ev.value.tokenIds.length; i++) out.tokenTimes.push(now);
      if (ev.value.tokenIds.length > 0) {
        out.deltaTimes.push(now);
        out.deltaTokens.push(ev.value.tokenIds.length);
        options.onDelta?.(now, ev.value.tokenIds.length);
      }
      if (ev.value.tokenIds.length > 0 && Number.isNaN(out.clientTtftMs)) out.clientTtftMs = now - t0;
      out.completionIds.push(...ev.value.tokenIds);
    } else if (ev.case === "finished") {
      out.finishReason = ev.value.finishReason;
      const t = ev.value.timings;
      if (t) {
        const { $typeName: _, $unknown: __, ...timings } = t;
        out.timings = timings;
      }
    }
  }
  out.clientTotalMs = performance.now() - t0;
  // A first token that is end-of-sequence arrives with no delta: count the stream's end instead.
  if (Number.isNaN(out.clientTtftMs)) out.clientTtftMs = out.clientTotalMs;
  return out;
}

export async function stats(c: Clients): Promise<StatsResponse> {
  return c.kv.stats({});
}

/**
 * Waits until the SSD tier holds at least `blocks` blocks and nothing is queued (the queue empties
 * when the last batch is taken, before it is written, so the block count is what tells that the
 * writes are durable); returns the milliseconds waited.
 */
export async function waitWritten(c: Clients, blocks: number, timeoutMs = 180_000): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    const s = await stats(c);
    if (s.writeQueueDepth === 0 && Number(s.ssd?.blocks ?? 0) >= blocks) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) {
      throw new Error(
        `SSD tier holds ${s.ssd?.blocks ?? 0} of ${blocks} blocks, ${s.writeQueueDepth} queued, after ${timeoutMs} ms`,
      );
    }
    await sleep(10);
  }
}
