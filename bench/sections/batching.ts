/**
 * Continuous batching: what decoding many streams together gives, side by side against one server.
 *
 * Every level (1, 2, 4, 8, 16 streams) sends that many Generate calls at once, each with a distinct
 * prompt of a few hundred tokens (lengths drawn between `promptTokensMin` and `promptTokensMax`) and the
 * same `max_tokens`. The prompts were cached by a warm-up request each, so a level is decoding, not
 * prefilling. Per level: aggregate decode tokens/s over the window in which all streams decode (as in
 * the concurrency section), its ratio to the single stream's, inter-token latency from the arrival
 * times of the streamed deltas (p50, p99, over every stream), and the engine's memory: the largest
 * `Stats.engine.rss_bytes` polled during the level against `memory_max_bytes`, the largest decode batch
 * it reported, and the kernel's RSS of the engine process as a cross-check.
 *
 * Then the TTFT of a new request (a never-seen prompt) sent while `busyStreams` streams decode, against
 * the same kind of request on the idle server just before.
 *
 * Nothing makes a stream ignore end-of-sequence (SamplingParams has no such option), so a stream may
 * end early: greedy decoding of a fixed prompt is deterministic, every run reports how many did, and
 * the window-based rate only counts the time all streams decode.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { FinishReason } from "../../gen/kvpark/v1/inference_pb";
import { connect, generate, stats, type Clients, type GenerateResult } from "../lib/client";
import type { ModelShape } from "../lib/model";
import { BenchServer } from "../lib/server";
import { fmt, median, percentile, randomTokens, Rng, sleep, type Progress } from "../lib/util";
import { decodeWindow } from "./concurrency";

/** The goal continuous batching is measured against: this many streams, this many times one stream's rate. */
export const GOAL = { streams: 8, ratio: 4 } as const;

export interface BatchingOptions {
  model: ModelShape;
  /** Concurrent streams per level, e.g. [1, 2, 4, 8, 16]. */
  streams: number[];
  /** Repeats of every level (and of the busy-engine TTFT); cells are medians over them. */
  runs: number;
  promptTokensMin: number;
  promptTokensMax: number;
  /** max_tokens of every stream of a level. */
  decodeTokens: number;
  /** Streams decoding while a new request's TTFT is measured. */
  busyStreams: number;
  /** Prompt length of that new request (and of its idle-server reference). */
  probeTokens: number;
  workDir: string;
  progress: Progress;
  tokenLimit: number;
}

/** What the engine reported (Stats.engine) and the kernel said about it while a level ran. */
export interface EngineWatchResult {
  /** Stats polls that carried an engine report, of all polls. */
  reports: number;
  polls: number;
  /** Largest Stats.engine.rss_bytes; NaN when the engine sent no report. */
  rssBytesMax: number;
  /** Stats.engine.memory_max_bytes (the bound); NaN when the engine sent no report. */
  memoryMaxBytes: number;
  memoryReservedBytesMax: number;
  /**
   * Largest Stats.engine.decode_batch over reports of steps taken after the first poll (a report from
   * before names the previous level's last step), and largest sequences_waiting.
   */
  decodeBatchMax: number;
  sequencesWaitingMax: number;
  /** Largest VmRSS of the engine process from /proc (independent of the engine's report). */
  procRssBytesMax: number;
}

export interface BatchingRun {
  streams: number;
  run: number;
  /** Tokens per second, all streams together, in the window where all of them decode. */
  aggregateTokensPerSecond: number;
  windowMs: number;
  tokensInWindow: number;
  /** Inter-token latency over every stream's deltas after its first, ms. */
  itlMs: { p50: number; p99: number; n: number };
  /** Client-side TTFT of the level's streams (prompt restored from RAM), median. */
  ttftMsMedian: number;
  promptTokens: number[];
  completionTokens: number[];
  /** Streams that ended before max_tokens (end of sequence). */
  endedEarly: number;
  engine: EngineWatchResult;
  /** Engine CPU time over the level's wall time, % of one core: how much of the machine it got. */
  engineCpuPercent: number;
}

/** A new request's TTFT while `streams` streams decode, and on the idle server just before. */
export interface BusyProbe {
  run: number;
  streams: number;
  promptTokens: number;
  /** Server-side TTFT (arrival to first token) and client-side (call to first token received), ms. */
  idleTtftMs: number;
  idleClientTtftMs: number;
  busyTtftMs: number;
  busyClientTtftMs: number;
  /** Background streams still decoding when the new request's first token arrived. */
  decodingAtFirstToken: number;
}

export interface BatchingLevel {
  streams: number;
  runs: number;
  aggregateTokensPerSecond: number;
  /**
   * aggregateTokensPerSecond over the single stream's of the same run (side by side), median of the
   * runs' ratios.
   */
  ratioToSingle: number;
  itlP50Ms: number;
  itlP99Ms: number;
  endedEarly: number;
  engineCpuPercent: number;
  /** Maxima over the runs (NaN where the engine sent no report). */
  rssBytesMax: number;
  memoryMaxBytes: number;
  decodeBatchMax: number;
  procRssBytesMax: number;
}

export interface BatchingSummary {
  levels: BatchingLevel[];
  goal: typeof GOAL & { ratio8: number; met: boolean };
  busy: {
    streams: number;
    promptTokens: number;
    idleTtftMs: number;
    busyTtftMs: number;
    /** busy / idle, median of the runs' ratios. */
    ratio: number;
    busyClientTtftMs: number;
    /** Fewest background streams still decoding at the new request's first token, over the runs. */
    decodingAtFirstTokenMin: number;
  };
}

export interface BatchingResult {
  promptTokens: number[];
  decodeTokens: number;
  runs: BatchingRun[];
  probes: BusyProbe[];
  summary: BatchingSummary;
  table: string;
}

const maxOf = (a: number, b: number) => (Number.isNaN(a) ? b : Number.isNaN(b) ? a : Math.max(a, b));

/** Polls Stats and /proc every `intervalMs` until stopped, keeping the maxima. */
function watchEngine(c: Clients, server: BenchServer, intervalMs = 250): () => Promise<EngineWatchResult> {
  const r: EngineWatchResult = {
    reports: 0,
    polls: 0,
    rssBytesMax: Number.NaN,
    memoryMaxBytes: Number.NaN,
    memoryReservedBytesMax: Number.NaN,
    decodeBatchMax: Number.NaN,
    sequencesWaitingMax: Number.NaN,
    procRssBytesMax: Number.NaN,
  };
  let stopped = false;
  let firstSteps: bigint | undefined;
  const loop = (async () => {
    while (!stopped) {
      r.procRssBytesMax = maxOf(r.procRssBytesMax, server.engineRssBytes());
      try {
        const e = (await stats(c)).engine;
        r.polls++;
        if (e) {
          r.reports++;
          r.rssBytesMax = maxOf(r.rssBytesMax, Number(e.rssBytes));
          r.memoryMaxBytes = Number(e.memoryMaxBytes);
          r.memoryReservedBytesMax = maxOf(r.memoryReservedBytesMax, Number(e.memoryReservedBytes));
          firstSteps ??= e.steps;
          if (e.steps > firstSteps) r.decodeBatchMax = maxOf(r.decodeBatchMax, e.decodeBatch);
          r.sequencesWaitingMax = maxOf(r.sequencesWaitingMax, e.sequencesWaiting);
        }
      } catch {
        // A poll that failed (the engine restarting) is not a sample.
      }
      await sleep(intervalMs);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return r;
  };
}

/**
 * Inter-token latencies of the streams, ms: the gap between consecutive deltas of a stream, divided
 * among the tokens of the later delta (a delta usually carries one token).
 */
export function interTokenMs(results: GenerateResult[]): number[] {
  const out: number[] = [];
  for (const r of results) {
    for (let i = 1; i < r.deltaTimes.length; i++) {
      const k = r.deltaTokens[i];
      const gap = (r.deltaTimes[i] - r.deltaTimes[i - 1]) / k;
      for (let j = 0; j < k; j++) out.push(gap);
    }
  }
  return out;
}

/** Waits until the engine runs no sequence (as its report says), e.g. after cancelling streams. */
async function waitIdle(c: Clients, timeoutMs = 60_000): Promise<void> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    const e = (await stats(c)).engine;
    // Without a report there is nothing to wait on; cancelled sequences end at the engine's next step.
    if (!e) return sleep(1000);
    if (e.sequencesRunning === 0) return;
    await sleep(100);
  }
}

async function level(
  c: Clients,
  server: BenchServer,
  prompts: number[][],
  decodeTokens: number,
  run: number,
): Promise<BatchingRun> {
  const stop = watchEngine(c, server);
  const cpu0 = server.engineCpuMs();
  const t0 = performance.now();
  const results = await Promise.all(
    prompts.map((tokens) => generate(c, { tokens }, { maxTokens: decodeTokens, persist: false })),
  );
  const engineCpuPercent = (100 * (server.engineCpuMs() - cpu0)) / (performance.now() - t0);
  const engine = await stop();
  const w = decodeWindow(results);
  const itl = interTokenMs(results);
  return {
    streams: prompts.length,
    run,
    aggregateTokensPerSecond: w.tokensPerSecond,
    windowMs: w.windowMs,
    tokensInWindow: w.tokens,
    itlMs: { p50: percentile(itl, 50), p99: percentile(itl, 99), n: itl.length },
    ttftMsMedian: median(results.map((r) => r.clientTtftMs)),
    promptTokens: prompts.map((p) => p.length),
    completionTokens: results.map((r) => r.completionIds.length),
    endedEarly: results.filter((r) => r.finishReason !== FinishReason.MAX_TOKENS).length,
    engine,
    engineCpuPercent,
  };
}

/**
 * A never-seen prompt on the idle server, then another while `background` streams decode: sent once
 * every background stream has received two tokens, and the background streams cancelled after its
 * first token.
 */
async function probe(
  c: Clients,
  background: number[][],
  o: BatchingOptions,
  run: number,
  seed: number,
): Promise<BusyProbe> {
  const cold = (s: number) => ({ tokens: randomTokens(s, o.probeTokens, o.tokenLimit) });
  const idle = await generate(c, cold(seed), { maxTokens: 1, persist: false });

  const abort = new AbortController();
  const received = background.map(() => 0);
  let ended = 0;
  let decoding!: () => void;
  const allDecoding = new Promise<void>((resolve) => (decoding = resolve));
  const streams = background.map((tokens, i) =>
    generate(
      c,
      { tokens },
      {
        // Long enough to outlast the new request's prefill; cancelled once it has its first token.
        maxTokens: Math.max(256, 16 * o.decodeTokens),
        persist: false,
        signal: abort.signal,
        onDelta: (_, k) => {
          received[i] += k;
          if (received.every((n) => n >= 2)) decoding();
        },
      },
    ).then(
      () => void ended++,
      (err: unknown) => {
        ended++;
        if (!abort.signal.aborted) throw err;
      },
    ),
  );
  // A background stream that ends (or fails) before decoding two tokens leaves nothing to wait for.
  await Promise.race([allDecoding, Promise.all(streams)]);
  const busy = await generate(c, cold(seed + 1), { maxTokens: 1, persist: false });
  const decodingAtFirstToken = background.length - ended;
  abort.abort();
  await Promise.all(streams);
  await waitIdle(c);
  return {
    run,
    streams: background.length,
    promptTokens: o.probeTokens,
    idleTtftMs: idle.timings.ttftMs,
    idleClientTtftMs: idle.clientTtftMs,
    busyTtftMs: busy.timings.ttftMs,
    busyClientTtftMs: busy.clientTtftMs,
    decodingAtFirstToken,
  };
}

export function summarizeBatching(runs: BatchingRun[], probes: BusyProbe[]): BatchingSummary {
  const streams = [...new Set(runs.map((r) => r.streams))].sort((a, b) => a - b);
  // The single stream of the same run: levels run side by side, so their ratio is what other work on
  // the machine moves least.
  const single = (run: number) =>
    runs.find((r) => r.streams === 1 && r.run === run)?.aggregateTokensPerSecond ?? Number.NaN;
  const levels = streams.map((n): BatchingLevel => {
    const rs = runs.filter((r) => r.streams === n);
    const aggregate = median(rs.map((r) => r.aggregateTokensPerSecond));
    const most = (f: (e: EngineWatchResult) => number) =>
      rs.map((r) => f(r.engine)).reduce(maxOf, Number.NaN);
    return {
      streams: n,
      runs: rs.length,
      aggregateTokensPerSecond: aggregate,
      ratioToSingle: median(rs.map((r) => r.aggregateTokensPerSecond / single(r.run))),
      itlP50Ms: median(rs.map((r) => r.itlMs.p50)),
      itlP99Ms: median(rs.map((r) => r.itlMs.p99)),
      endedEarly: rs.reduce((sum, r) => sum + r.endedEarly, 0),
      engineCpuPercent: median(rs.map((r) => r.engineCpuPercent)),
      rssBytesMax: most((e) => e.rssBytesMax),
      memoryMaxBytes: most((e) => e.memoryMaxBytes),
      decodeBatchMax: most((e) => e.decodeBatchMax),
      procRssBytesMax: most((e) => e.procRssBytesMax),
    };
  });
  const ratio8 = levels.find((l) => l.streams === GOAL.streams)?.ratioToSingle ?? Number.NaN;
  return {
    levels,
    goal: { ...GOAL, ratio8, met: ratio8 >= GOAL.ratio },
    busy: {
      streams: probes[0]?.streams ?? 0,
      promptTokens: probes[0]?.promptTokens ?? 0,
      idleTtftMs: median(probes.map((p) => p.idleTtftMs)),
      busyTtftMs: median(probes.map((p) => p.busyTtftMs)),
      ratio: median(probes.map((p) => p.busyTtftMs / p.idleTtftMs)),
      busyClientTtftMs: median(probes.map((p) => p.busyClientTtftMs)),
      decodingAtFirstTokenMin: probes.length ? Math.min(...probes.map((p) => p.decodingAtFirstToken)) : 0,
    },
  };
}

const bytes = (x: number) =>
  !Number.isFinite(x) ? "n/a" : x >= 1e9 ? `${fmt(x / 1e9, 2)} GB` : `${fmt(x / 1e6, 0)} MB`;
const ms = (x: number) =>
  !Number.isFinite(x) ? "n/a" : x >= 10_000 ? `${fmt(x / 1000, 1)} s` : `${fmt(x, 0)} ms`;

/** The goal, beside the ratio it is about. */
function goalText(ratio: number): string {
  const verdict = !Number.isFinite(ratio) ? "not measured" : ratio >= GOAL.ratio ? "met" : "not met";
  return `goal >= ${GOAL.ratio}x: ${verdict}`;
}

export function batchingMarkdown(
  s: BatchingSummary,
  o: { decodeTokens: number; promptTokens: number[] },
): string {
  const out: string[] = [];
  out.push(
    `Streams decoding together, each with its own cached prompt of ${fmt(Math.min(...o.promptTokens))} to ` +
      `${fmt(Math.max(...o.promptTokens))} tokens and ${o.decodeTokens} tokens to generate; medians of ` +
      `${s.levels[0]?.runs ?? 0} run(s). Aggregate decode tokens/s counts the window in which every stream decodes, ` +
      `and is compared with the single stream of the same run (median of the runs' ratios); inter-token latency ` +
      `is the gap between a stream's deltas as the client received them; engine CPU is the engine process's CPU ` +
      `time over the level's wall time (200% = both cores: what other work on the machine left it); engine memory ` +
      `is the largest of the engine's reports (\`Stats.engine\`) polled during the level, against its bound ` +
      `(\`memory_max_bytes\`), and the kernel's RSS of the engine process beside it.`,
    "",
    "| streams | aggregate decode tok/s | vs one stream | inter-token p50 / p99 | decode batch (max) | engine CPU | engine RSS (Stats) / bound | engine RSS (/proc) |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const l of s.levels) {
    const ratio = `${fmt(l.ratioToSingle, 2)}x${l.streams === GOAL.streams ? ` (${goalText(l.ratioToSingle)})` : ""}`;
    const rss = Number.isFinite(l.memoryMaxBytes)
      ? `${bytes(l.rssBytesMax)} / ${bytes(l.memoryMaxBytes)} (${fmt((100 * l.rssBytesMax) / l.memoryMaxBytes, 0)}%)`
      : "n/a (no engine report)";
    out.push(
      `| ${l.streams} | ${fmt(l.aggregateTokensPerSecond, 2)} | ${ratio} | ${ms(l.itlP50Ms)} / ${ms(l.itlP99Ms)} | ` +
        `${Number.isFinite(l.decodeBatchMax) ? fmt(l.decodeBatchMax) : "n/a"} | ${fmt(l.engineCpuPercent, 0)}% | ` +
        `${rss} | ${bytes(l.procRssBytesMax)} |`,
    );
  }
  out.push("");
  const b = s.busy;
  out.push(
    `A new request (a never-seen ${fmt(b.promptTokens)}-token prompt) sent while ${b.streams} streams decode: first token ` +
      `after ${ms(b.busyTtftMs)} (server-side; ${ms(b.busyClientTtftMs)} at the client), against ${ms(b.idleTtftMs)} on the ` +
      `idle server just before: ${fmt(b.ratio, 2)}x. At least ${b.decodingAtFirstTokenMin} of the ${b.streams} streams ` +
      `were still decoding when it came.`,
  );
  const early = s.levels.reduce((sum, l) => sum + l.endedEarly, 0);
  if (early > 0) {
    out.push(
      "",
      `${early} stream(s) ended at end-of-sequence before ${o.decodeTokens} tokens; the rates count only the time all streams decoded.`,
    );
  }
  return out.join("\n");
}

export async function runBatching(o: BatchingOptions): Promise<BatchingResult> {
  const dataDir = path.join(o.workDir, "batching");
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.mkdirSync(dataDir, { recursive: true });
  const server = await BenchServer.start({ dataDir, model: o.model.dir, args: ["--ssd-fsync", "none"] });
  const c = connect(server.url);
  const rng = new Rng(2024);
  const count = Math.max(...o.streams, o.busyStreams);
  const prompts = Array.from({ length: count }, (_, i) =>
    randomTokens(7000 + i, rng.int(o.promptTokensMin, o.promptTokensMax), o.tokenLimit),
  );
  const runs: BatchingRun[] = [];
  const probes: BusyProbe[] = [];
  try {
    o.progress.log(
      `batching: caching ${count} prompts of ${o.promptTokensMin} to ${o.promptTokensMax} tokens`,
    );
    const t0 = performance.now();
    for (const tokens of prompts) await generate(c, { tokens }, { maxTokens: 1 });
    const cachedMs = performance.now() - t0;
    // The SSD writes of the warm-up would otherwise compete with the first level for the cores.
    while ((await stats(c)).writeQueueDepth > 0) await sleep(50);
    o.progress.log(
      `batching: prompts cached in ${(cachedMs / 1000).toFixed(1)} s, ` +
        `written to SSD ${((performance.now() - t0 - cachedMs) / 1000).toFixed(1)} s later`,
    );
    for (let run = 0; run < o.runs; run++) {
      for (const n of o.streams) {
        const r = await level(c, server, prompts.slice(0, n), o.decodeTokens, run);
        runs.push(r);
        const single =
          runs.find((x) => x.streams === 1 && x.run === run)?.aggregateTokensPerSecond ?? Number.NaN;
        const ratio = r.aggregateTokensPerSecond / single;
        o.progress.log(
          `batching: ${n} stream(s), run ${run + 1}/${o.runs}: ${r.aggregateTokensPerSecond.toFixed(2)} tok/s aggregate, ` +
            `${ratio.toFixed(2)}x one stream${n === GOAL.streams ? ` (${goalText(ratio)})` : ""}; ` +
            `inter-token p50 ${r.itlMs.p50.toFixed(0)} ms, p99 ${r.itlMs.p99.toFixed(0)} ms; ` +
            `engine CPU ${r.engineCpuPercent.toFixed(0)}%, decode batch up to ${r.engine.decodeBatchMax}; ` +
            `engine RSS ${bytes(r.engine.rssBytesMax)} of ${bytes(r.engine.memoryMaxBytes)} ` +
            `(/proc ${bytes(r.engine.procRssBytesMax)}; ${r.engine.reports}/${r.engine.polls} polls with a report)` +
            (r.endedEarly ? `; ${r.endedEarly} ended early` : ""),
        );
      }
      const p = await probe(c, prompts.slice(0, o.busyStreams), o, run, 9000 + 10 * run);
      probes.push(p);
      o.progress.log(
        `batching: a ${p.promptTokens}-token prompt's TTFT while ${p.streams} streams decode ${p.busyTtftMs.toFixed(0)} ms, ` +
          `idle ${p.idleTtftMs.toFixed(0)} ms (${p.decodingAtFirstToken} still decoding at its first token)`,
      );
    }
  } finally {
    await server.stop();
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
  const summary = summarizeBatching(runs, probes);
  const promptTokens = prompts.map((p) => p.length);
  return {
    promptTokens,
    decodeTokens: o.decodeTokens,
    runs,
    probes,
    summary,
    table: batchingMarkdown(summary, { decodeTokens: o.decodeTokens, promptTokens }),
  };
}
