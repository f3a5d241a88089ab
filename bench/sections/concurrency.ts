/**
 * Aggregate decode throughput with 1, 4 and 8 concurrent Generate streams. Every stream's prompt is
 * a shared prefix (cached by a warm-up request) plus a few tokens of its own, so prefill is short and
 * the measured window is decoding: from the moment every stream has its first token to the moment the
 * first stream finishes, tokens received by all streams divided by the window's length.
 *
 * Then, on the same server, what other calls see while the engine is busy: a never-seen prompt of
 * `busyPromptTokens` is prefilled while the bench sends gRPC health checks one after the other (the
 * front end answers them, not the engine) and one short prompt; their round trips and the short
 * prompt's TTFT are recorded, with whether it got its first token before the long prompt did.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { connect, generate, type Clients, type GenerateResult } from "../lib/client";
import type { ModelShape } from "../lib/model";
import { BenchServer } from "../lib/server";
import { randomTokens, sleep, summarize, type Progress, type Summary } from "../lib/util";

export interface ConcurrencyOptions {
  model: ModelShape;
  streams: number[];
  runs: number;
  prefixTokens: number;
  decodeTokens: number;
  workDir: string;
  progress: Progress;
  tokenLimit: number;
  /** Length of the cold prompt prefilled while health checks and a short prompt are timed. */
  busyPromptTokens: number;
}

export interface ConcurrencyRun {
  streams: number;
  /** Tokens per second, all streams together, in the window where all of them decode. */
  aggregateTokensPerSecond: number;
  /** Mean of the streams' own decode rates as the server reports them. */
  perStreamTokensPerSecond: number;
  windowMs: number;
  tokensInWindow: number;
  completionTokens: number[];
}

/** Calls answered while the engine prefilled a long cold prompt. */
export interface BusyResult {
  promptTokens: number;
  /** The long prompt's own client-side TTFT (its prefill), ms. */
  longTtftMs: number;
  /** Round trips of grpc.health.v1.Health/Check sent one after the other during that prefill, ms. */
  healthMs: Summary;
  /** Client-side TTFT of a short prompt sent 100 ms into the prefill. */
  shortPromptTokens: number;
  shortTtftMs: number;
  /** Whether the short prompt's first token arrived before the long prompt's. */
  shortFirst: boolean;
}

export interface ConcurrencyResult {
  contextTokens: number;
  decodeTokens: number;
  runs: ConcurrencyRun[];
  busy?: BusyResult;
}

/**
 * Decode throughput of streams run together, over the window in which all of them decode: from the
 * moment every stream has its first token to the moment the first one ends, the tokens all streams
 * received in it over its length (NaN when the window is empty).
 */
export function decodeWindow(results: GenerateResult[]): {
  tokensPerSecond: number;
  windowMs: number;
  tokens: number;
} {
  const firsts = results.map((r) => r.tokenTimes[0] ?? Number.POSITIVE_INFINITY);
  const lasts = results.map((r) => r.tokenTimes.at(-1) ?? Number.NEGATIVE_INFINITY);
  const from = Math.max(...firsts);
  const to = Math.min(...lasts);
  let tokens = 0;
  for (const r of results) tokens += r.tokenTimes.filter((t) => t > from && t <= to).length;
  const windowMs = to - from;
  return { tokensPerSecond: windowMs > 0 ? (tokens * 1000) / windowMs : Number.NaN, windowMs, tokens };
}

function measure(results: GenerateResult[]): Omit<ConcurrencyRun, "streams"> {
  const w = decodeWindow(results);
  const rates = results.map((r) => r.timings.decodeTokensPerSecond);
  return {
    aggregateTokensPerSecond: w.tokensPerSecond,
    perStreamTokensPerSecond: rates.reduce((a, b) => a + b, 0) / rates.length,
    windowMs: w.windowMs,
    tokensInWindow: w.tokens,
    completionTokens: results.map((r) => r.completionIds.length),
  };
}

export async function runConcurrency(o: ConcurrencyOptions): Promise<ConcurrencyResult> {
  const dataDir = path.join(o.workDir, "concurrency");
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.mkdirSync(dataDir, { recursive: true });
  const server = await BenchServer.start({ dataDir, model: o.model.dir, args: ["--ssd-fsync", "none"] });
  const c = connect(server.url);
  const prefix = randomTokens(424242, o.prefixTokens, o.tokenLimit);
  const suffixTokens = 8;
  const out: ConcurrencyResult = {
    contextTokens: o.prefixTokens + suffixTokens,
    decodeTokens: o.decodeTokens,
    runs: [],
  };
  try {
    o.progress.log(`concurrency: caching the ${o.prefixTokens}-token shared prefix`);
    await generate(c, { tokens: prefix }, { maxTokens: 1 });
    let seed = 1;
    for (let run = 0; run < o.runs; run++) {
      for (const n of o.streams) {
        const prompts = Array.from({ length: n }, () => [
          ...prefix,
          ...randomTokens(seed++, suffixTokens, o.tokenLimit),
        ]);
        const results = await Promise.all(
          prompts.map((tokens) => generate(c, { tokens }, { maxTokens: o.decodeTokens, persist: false })),
        );
        const m = { streams: n, ...measure(results) };
        out.runs.push(m);
        o.progress.log(
          `concurrency: ${n} stream(s), run ${run + 1}/${o.runs}: ${m.aggregateTokensPerSecond.toFixed(2)} tok/s aggregate ` +
            `(${m.tokensInWindow} tokens in ${(m.windowMs / 1000).toFixed(1)} s)`,
        );
      }
    }
    out.busy = await measureBusy(c, o, seed);
    const b = out.busy;
    o.progress.log(
      `concurrency: during a ${b.promptTokens}-token prefill (${(b.longTtftMs / 1000).toFixed(1)} s) ` +
        `${b.healthMs.n} health checks took ${b.healthMs.median.toFixed(1)} ms median, ${b.healthMs.max.toFixed(1)} ms at most; ` +
        `a short prompt's TTFT ${b.shortTtftMs.toFixed(0)} ms (${b.shortFirst ? "before" : "after"} the long one's)`,
    );
  } finally {
    await server.stop();
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
  return out;
}

async function measureBusy(c: Clients, o: ConcurrencyOptions, seed: number): Promise<BusyResult> {
  o.progress.log(
    `concurrency: health checks and a short prompt during a ${o.busyPromptTokens}-token prefill`,
  );
  const shortPromptTokens = 8;
  let longDone = false;
  const long = generate(
    c,
    { tokens: randomTokens(seed + 1000, o.busyPromptTokens, o.tokenLimit) },
    { maxTokens: 1, persist: false },
  ).finally(() => (longDone = true));
  const healthMs: number[] = [];
  const probes = (async () => {
    while (!longDone) {
      const t0 = performance.now();
      await c.health.check({});
      // A check that finished after the prefill did not measure a busy engine.
      if (!longDone) healthMs.push(performance.now() - t0);
      await sleep(20);
    }
  })();
  await sleep(100);
  const short = await generate(
    c,
    { tokens: randomTokens(seed + 2000, shortPromptTokens, o.tokenLimit) },
    { maxTokens: 1, persist: false },
  );
  const longResult = await long;
  await probes;
  return {
    promptTokens: o.busyPromptTokens,
    longTtftMs: longResult.clientTtftMs,
    healthMs: summarize(healthMs),
    shortPromptTokens,
    shortTtftMs: short.clientTtftMs,
    shortFirst: (short.tokenTimes[0] ?? Infinity) < (longResult.tokenTimes[0] ?? Infinity),
  };
}
