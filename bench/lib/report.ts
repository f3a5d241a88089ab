import type { BusyResult, ConcurrencyResult } from "../sections/concurrency";
import type { ReplayResult } from "../sections/replay";
import type { TokenizerResult } from "../sections/tokenizer";
import type { ContextResult, Sample } from "../sections/ttft";
import type { Machine } from "./machine";
import type { ModelShape } from "./model";
import { stagesSection, summarizeStages, type StageSummary } from "./ttft-stages";
import { fmt, median, summarize, type Summary } from "./util";

/** The request paths the TTFT section measures. */
type TtftPath = "cold" | "coldCacheOff" | "resident" | "ram" | "ssd" | "restart";

/** The medians the tables and the chart show, per context length. */
export interface ContextSummary {
  contextTokens: number;
  runs: Record<TtftPath, number>;
  /** Server-side TTFT (request arrival to first token), ms. */
  ttftMs: Record<TtftPath, Summary>;
  /** Client-side TTFT (call to first token received over gRPC), ms. */
  clientTtftMs: Record<TtftPath, Summary>;
  /** Cold TTFT (cache off) over each reuse path's TTFT. */
  speedup: { resident: number; ram: number; ssd: number; restart: number };
  ssdRestoreMs: Summary;
  restoreMBps: number;
  ddMBps: number;
  /** Median of restore throughput / dd throughput over the SSD runs. */
  restoreOverDd: number;
  /** Cache on / cache off, cold requests: TTFT, and request time (last message; persist included). */
  persistTtftRatio: number;
  persistRequestRatio: number;
  /**
   * The same for the engine's CPU time, the cache-on side including the SSD writes after the request:
   * insensitive to other work on the machine.
   */
  persistCpuRatio: number;
  /** Milliseconds after a cold request's end until its blocks were durable on SSD. */
  persistDrainMs: number;
  restartReadyMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  ssdBytesPerToken: number;
  kvBytesPerToken: number;
  /** Engine CPU time over wall time during cold prefills, in % of one core (200% = both cores). */
  coldEngineCpuPercent: number;
  coldEngineCpuPercentMin: number;
  /** Control: RAM hit TTFT right after dropping the page cache, against the RAM hit median. */
  ramAfterDropMs: number;
  /** Per-stage medians of the client-measured TTFT of each reuse path. */
  stages: { resident: StageSummary; ram: StageSummary; ssd: StageSummary; restart: StageSummary };
  /** Restore MB/s of the first requests after a restart (KV bytes read from SSD over the restore). */
  restartRestoreMBps: number;
  warnings: string[];
}

const ttft = (xs: Sample[]) => summarize(xs.map((s) => s.serverTtftMs));
const clientTtft = (xs: Sample[]) => summarize(xs.map((s) => s.clientTtftMs));

export function summarizeContext(r: ContextResult, model: ModelShape): ContextSummary {
  const pairs = Math.min(r.cold.length, r.coldCacheOff.length);
  const ttftRatios: number[] = [];
  const requestRatios: number[] = [];
  const cpuRatios: number[] = [];
  for (let i = 0; i < pairs; i++) {
    ttftRatios.push(r.cold[i].serverTtftMs / r.coldCacheOff[i].serverTtftMs);
    requestRatios.push(r.cold[i].serverTotalMs / r.coldCacheOff[i].serverTotalMs);
    cpuRatios.push(r.coldCpuUntilDurableMs[i] / r.coldCacheOff[i].engineCpuMs);
  }
  const restoreMBps = r.restoreVsDd.map((x) => x.bytes / 1e3 / x.restoreMs);
  const ddMBps = r.restoreVsDd.map((x) => x.bytes / 1e3 / x.ddMs);
  const coldOff = median(r.coldCacheOff.map((s) => s.serverTtftMs));
  const allCold = [...r.cold, ...r.coldCacheOff];
  return {
    contextTokens: r.contextTokens,
    runs: {
      cold: r.cold.length,
      coldCacheOff: r.coldCacheOff.length,
      resident: r.resident.length,
      ram: r.ram.length,
      ssd: r.ssd.length,
      restart: r.restart.length,
    },
    ttftMs: {
      cold: ttft(r.cold),
      coldCacheOff: ttft(r.coldCacheOff),
      resident: ttft(r.resident),
      ram: ttft(r.ram),
      ssd: ttft(r.ssd),
      restart: ttft(r.restart),
    },
    clientTtftMs: {
      cold: clientTtft(r.cold),
      coldCacheOff: clientTtft(r.coldCacheOff),
      resident: clientTtft(r.resident),
      ram: clientTtft(r.ram),
      ssd: clientTtft(r.ssd),
      restart: clientTtft(r.restart),
    },
    speedup: {
      resident: coldOff / median(r.resident.map((s) => s.serverTtftMs)),
      ram: coldOff / median(r.ram.map((s) => s.serverTtftMs)),
      ssd: coldOff / median(r.ssd.map((s) => s.serverTtftMs)),
      restart: coldOff / median(r.restart.map((s) => s.serverTtftMs)),
    },
    ssdRestoreMs: summarize(r.ssd.map((s) => s.restoreMs)),
    restoreMBps: median(restoreMBps),
    ddMBps: median(ddMBps),
    restoreOverDd: median(r.restoreVsDd.map((x) => x.ddMs / x.restoreMs)),
    persistTtftRatio: median(ttftRatios),
    persistRequestRatio: median(requestRatios),
    persistCpuRatio: median(cpuRatios),
    persistDrainMs: median(r.persistDrainMs),
    restartReadyMs: median(r.restartReadyMs),
    prefillTokensPerSecond: median(allCold.map((s) => (s.recomputedTokens * 1000) / s.prefillMs)),
    decodeTokensPerSecond: median(r.decode.map((s) => s.decodeTokensPerSecond)),
    ssdBytesPerToken: r.ssdCachedTokens > 0 ? r.ssdBytes / r.ssdCachedTokens : Number.NaN,
    kvBytesPerToken: model.kvBytesPerToken,
    coldEngineCpuPercent: median(allCold.map((s) => (100 * s.engineCpuMs) / s.clientTotalMs)),
    coldEngineCpuPercentMin: Math.min(...allCold.map((s) => (100 * s.engineCpuMs) / s.clientTotalMs)),
    ramAfterDropMs: median(r.ramAfterDrop.map((s) => s.serverTtftMs)),
    stages: {
      resident: summarizeStages(r.resident.map((s) => s.stages)),
      ram: summarizeStages(r.ram.map((s) => s.stages)),
      ssd: summarizeStages(r.ssd.map((s) => s.stages)),
      restart: summarizeStages(r.restart.map((s) => s.stages)),
    },
    restartRestoreMBps: median(
      r.restart.map((s) => (s.ssdTokens * (r.ssdBytes / r.ssdCachedTokens)) / 1e3 / s.restoreMs),
    ),
    warnings: r.warnings,
  };
}

export interface ConcurrencySummary {
  streams: number;
  aggregateTokensPerSecond: number;
  perStreamTokensPerSecond: number;
  runs: number;
}

export function summarizeConcurrency(c: ConcurrencyResult): ConcurrencySummary[] {
  const streams = [...new Set(c.runs.map((r) => r.streams))].sort((a, b) => a - b);
  return streams.map((n) => {
    const runs = c.runs.filter((r) => r.streams === n);
    return {
      streams: n,
      aggregateTokensPerSecond: median(runs.map((r) => r.aggregateTokensPerSecond)),
      perStreamTokensPerSecond: median(runs.map((r) => r.perStreamTokensPerSecond)),
      runs: runs.length,
    };
  });
}

const ms = (x: number) => {
  if (!Number.isFinite(x)) return "n/a";
  if (x >= 10_000) return `${fmt(x / 1000, 1)} s`;
  return `${fmt(x, 0)} ms`;
};
/** Milliseconds with one decimal below 10 ms (health checks, small builds). */
const msFine = (x: number) => (Number.isFinite(x) && x < 10 ? `${fmt(x, 1)} ms` : ms(x));
const times = (x: number) => (Number.isFinite(x) ? `${fmt(x, x >= 100 ? 0 : 1)}x` : "n/a");
const ctx = (n: number) => (n % 1024 === 0 ? `${n / 1024}k (${fmt(n)})` : fmt(n));

export interface ReportInput {
  mode: string;
  command: string;
  machine: Machine;
  model: ModelShape;
  wallSeconds: number;
  notes: string[];
  contexts: ContextSummary[];
  concurrency?: {
    summary: ConcurrencySummary[];
    contextTokens: number;
    decodeTokens: number;
    busy?: BusyResult;
  };
  /** bench/sections/batching.ts's text and table, when the batching section ran. */
  batchingTable?: string;
  replay?: ReplayResult;
  storeTable?: string;
  storeNote?: string;
  /** bench/model/prefill-decode.ts's JSON, when the engine section ran. */
  engine?: EngineResult;
  tokenizer?: TokenizerResult;
  /** bench/sections/reopen.ts's table, when the reopen section ran. */
  reopenTable?: string;
  /** bench/sections/constrained.ts's tables, when the constrained section ran. */
  constrainedTable?: string;
  /** bench/sections/agent.ts's text and table, when the agent section ran. */
  agentTable?: string;
}

export interface EngineResult {
  preset: string;
  chunkTokens: number;
  decodeTokens: number;
  results: Array<{ contextTokens: number; prefillTokensPerSecond: number; decodeTokensPerSecond: number }>;
}

export function markdown(r: ReportInput): string {
  const m = r.machine;
  const out: string[] = [];
  out.push(`## kvpark benchmark (${r.mode})`, "");
  out.push(`Command: \`${r.command}\` (${fmt(r.wallSeconds / 60, 1)} min wall).`, "");
  out.push(
    `Model: \`${r.model.preset}\` shape (${r.model.layers} layers, ${r.model.kvHeads} KV heads, head dim ${r.model.headDim}, ` +
      `${fmt(r.model.weightBytes / 1e9, 2)} GB float32 weights, random values), KV ${fmt(r.model.kvBytesPerToken)} bytes per token (float32).`,
    "",
  );
  out.push(
    `Machine: ${m.cpu}, ${m.cores} cores, ${fmt(m.ramGiB, 1)} GiB RAM, ${m.os} (kernel ${m.kernel}, virtualization: ${m.virtualization}); ` +
      `disk ${m.disk}; Node ${m.node}; ${m.mlxPackage}; engine allocator ${m.engineAllocator}; kvpark ${m.kvparkCommit}${m.kvparkDirty ? " (with uncommitted changes)" : ""}. ` +
      `Load average at start ${m.loadAverageAtStart.join(", ")}, at end ${(m.loadAverageAtEnd ?? []).join(", ")}.`,
    "",
  );
  for (const n of r.notes) out.push(`- ${n}`);
  out.push("");

  // The TTFT, restore and model-speed tables come from the ttft section; a run without it has no rows.
  if (r.contexts.length > 0) {
    out.push("### Time to first token", "");
    out.push(
      "Server-side TTFT (request arrival to first token), median of the runs; the runs per cell are in the JSON. " +
        "Speedups are against the cold request on a server with the cache off. Next turn: the prompt again right after " +
        "its cold request, as an agent's next turn comes (the engine takes over its last sequence's KV, " +
        "--resident-sequence, where the model allows); RAM hit: the prompt again after a request that stores nothing, " +
        "so its KV comes back from the RAM tier.",
      "",
    );
    out.push(
      "| context | cold, cache off | cold, cache on (miss) | next turn | RAM hit | SSD restore, page cache dropped | after restart, page cache dropped | speedup next turn / RAM / SSD / restart |",
    );
    out.push("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const c of r.contexts) {
      out.push(
        `| ${ctx(c.contextTokens)} | ${ms(c.ttftMs.coldCacheOff.median)} | ${ms(c.ttftMs.cold.median)} | ${ms(c.ttftMs.resident.median)} | ${ms(c.ttftMs.ram.median)} | ` +
          `${ms(c.ttftMs.ssd.median)} | ${ms(c.ttftMs.restart.median)} | ${times(c.speedup.resident)} / ${times(c.speedup.ram)} / ${times(c.speedup.ssd)} / ${times(c.speedup.restart)} |`,
      );
    }
    out.push("");
    out.push("Client-side TTFT (the bench's gRPC call to the first token received), same requests:", "");
    out.push(
      "| context | cold, cache off | cold, cache on | next turn | RAM hit | SSD restore | after restart |",
    );
    out.push("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const c of r.contexts) {
      const t = c.clientTtftMs;
      out.push(
        `| ${ctx(c.contextTokens)} | ${ms(t.coldCacheOff.median)} | ${ms(t.cold.median)} | ${ms(t.resident.median)} | ${ms(t.ram.median)} | ${ms(t.ssd.median)} | ${ms(t.restart.median)} |`,
      );
    }
    out.push("");

    out.push(stagesSection(r.contexts), "");

    out.push("### Restore, persistence, SSD footprint", "");
    out.push(
      "| context | SSD restore stage | restore MB/s | `dd iflag=direct` MB/s, same bytes | restore / dd (throughput) | persist cost, cache on / off: cold TTFT | request time | engine CPU time incl. SSD writes | SSD write after the request | SSD bytes per cached token (raw KV) | restart to ready |",
    );
    out.push("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const c of r.contexts) {
      out.push(
        `| ${ctx(c.contextTokens)} | ${ms(c.ssdRestoreMs.median)} | ${fmt(c.restoreMBps)} | ${fmt(c.ddMBps)} | ${fmt(c.restoreOverDd, 2)} | ` +
          `${fmt(c.persistTtftRatio, 3)} | ${fmt(c.persistRequestRatio, 3)} | ${fmt(c.persistCpuRatio, 3)} | ${ms(c.persistDrainMs)} | ` +
          `${fmt(c.ssdBytesPerToken)} (${fmt(c.kvBytesPerToken)}) | ${ms(c.restartReadyMs)} |`,
      );
    }
    out.push("");

    out.push("### Model speed", "");
    out.push(
      "| context | prefill tok/s (cold requests) | decode tok/s (one stream) | engine CPU during cold prefill |",
    );
    out.push("| ---: | ---: | ---: | ---: |");
    for (const c of r.contexts) {
      out.push(
        `| ${ctx(c.contextTokens)} | ${fmt(c.prefillTokensPerSecond, 1)} | ${fmt(c.decodeTokensPerSecond, 2)} | ${fmt(c.coldEngineCpuPercent, 0)}% of one core |`,
      );
    }
    out.push("");
  }
  if (r.concurrency) {
    out.push(
      `Concurrent streams (${fmt(r.concurrency.contextTokens)}-token prompts sharing a cached prefix, ${r.concurrency.decodeTokens} tokens each):`,
      "",
    );
    out.push("| streams | aggregate decode tok/s | per-stream decode tok/s (server) |");
    out.push("| ---: | ---: | ---: |");
    for (const s of r.concurrency.summary) {
      out.push(
        `| ${s.streams} | ${fmt(s.aggregateTokensPerSecond, 2)} | ${fmt(s.perStreamTokensPerSecond, 2)} |`,
      );
    }
    out.push("");
    const b = r.concurrency.busy;
    if (b) {
      out.push(
        `While the engine prefilled a cold ${fmt(b.promptTokens)}-token prompt (first token after ${ms(b.longTtftMs)}): ` +
          `health checks (\`grpc.health.v1.Health/Check\`, answered by the front end) took ${msFine(b.healthMs.median)} median and ` +
          `${msFine(b.healthMs.max)} at worst over ${b.healthMs.n} checks; a short prompt (${b.shortPromptTokens} tokens) sent meanwhile ` +
          `got its first token after ${ms(b.shortTtftMs)}, ${b.shortFirst ? "before" : "after"} the long prompt's.`,
        "",
      );
    }
  }

  if (r.engine) {
    out.push(
      `The model's forward pass in-process, without the server (bench/model/prefill-decode.ts: prefill in chunks of ${r.engine.chunkTokens}, ` +
        `${r.engine.decodeTokens} greedy decode steps):`,
      "",
    );
    out.push("| context | prefill tok/s | decode tok/s |");
    out.push("| ---: | ---: | ---: |");
    for (const e of r.engine.results) {
      out.push(
        `| ${ctx(e.contextTokens)} | ${fmt(e.prefillTokensPerSecond, 1)} | ${fmt(e.decodeTokensPerSecond, 2)} |`,
      );
    }
    out.push("");
  }

  if (r.batchingTable)
    out.push("### Continuous batching: decode by concurrent streams", "", r.batchingTable, "");

  if (r.constrainedTable) {
    out.push("### Structured outputs (constrained decoding)", "");
    out.push(
      "What a JSON Schema, JSON mode or a forced tool call costs per token against free text, and what " +
        "xgrammar costs on the run's vocabulary and on a Qwen-sized one (bench/sections/constrained.ts).",
      "",
      r.constrainedTable,
      "",
    );
  }

  if (r.agentTable) out.push("### Agent loop with tools, cache on and off", "", r.agentTable, "");

  if (r.reopenTable) {
    out.push("### Reopen after a restart", "");
    out.push(
      "How long the SSD tier takes to open with many blocks: the store from its checkpointed index or by " +
        "replaying every record, and the tier's whole open from its chain log or rebuilt from the store's " +
        "records (bench/sections/reopen.ts).",
      "",
      r.reopenTable,
      "",
    );
  }

  if (r.tokenizer) {
    out.push("### Tokenizer generation", "");
    out.push(
      `Learning the byte-level BPE tokenizer a generated model gets (\`buildTokenizerFiles\`, once per model directory), ` +
        `in the bench process, median of ${r.tokenizer.runs} runs:`,
      "",
    );
    out.push("| vocabulary | build time | fastest / slowest |");
    out.push("| ---: | ---: | ---: |");
    for (const t of r.tokenizer.builds) {
      out.push(
        `| ${fmt(t.vocabSize)} tokens | ${msFine(t.buildMs.median)} | ${msFine(t.buildMs.min)} / ${msFine(t.buildMs.max)} |`,
      );
    }
    out.push("");
  }

  if (r.replay) {
    const t = r.replay.totals;
    out.push("### Agent-session replay", "");
    out.push(
      `Two seeded coding-agent sessions (seed ${r.replay.seed}) over Generate as chat messages, ${r.replay.turns.length} turns, ` +
        `answers of up to ${r.replay.answerTokens} tokens, RAM tier ${fmt(r.replay.ramBytesMax / 2 ** 20)} MiB, page cache dropped at the restart. ` +
        `**Reused ${fmt(t.reusedTokens)} of ${fmt(t.idealTokens)} ideal tokens: ${fmt(100 * t.reuseShareOfIdeal, 1)}%** ` +
        `(RAM ${fmt(t.ramTokens)}, SSD ${fmt(t.ssdTokens)}; ${fmt(t.recomputedTokens)} of ${fmt(t.promptTokens)} prompt tokens computed). ` +
        `Ideal: per turn, the longest prefix of the prompt that an earlier request's prompt and answer began with, less the prompt's last token. ` +
        `History tokens the chat template did not re-render as generated: ${fmt(t.templateLostTokens)}.`,
      "",
    );
    out.push(
      "| turn | session | what happened | prompt tokens | ideal | reused RAM | reused SSD | computed | TTFT |",
    );
    out.push("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const x of r.replay.turns) {
      out.push(
        `| ${x.turn} | ${x.session} | ${x.label} | ${fmt(x.promptTokens)} | ${fmt(x.idealTokens)} | ${fmt(x.ramTokens)} | ${fmt(x.ssdTokens)} | ` +
          `${fmt(x.recomputedTokens)} | ${ms(x.serverTtftMs)} |`,
      );
    }
    out.push("");
  }

  if (r.storeTable) {
    out.push("### SSD block store: cold restore of blocks", "");
    if (r.storeNote) out.push(r.storeNote, "");
    out.push(r.storeTable, "");
  }

  const warnings = [
    ...r.contexts.flatMap((c) => c.warnings.map((w) => `${c.contextTokens}: ${w}`)),
    ...(r.replay?.warnings ?? []),
  ];
  if (warnings.length > 0) {
    out.push("### Warnings", "");
    for (const w of warnings) out.push(`- ${w}`);
    out.push("");
  }
  return out.join("\n");
}

/** A log-log line chart of TTFT against context length, one line per path. */
export function ttftChart(contexts: ContextSummary[], title: string): string {
  const series: Array<{ name: string; color: string; dash?: string; values: number[] }> = [
    { name: "cold, cache off", color: "#c0392b", values: contexts.map((c) => c.ttftMs.coldCacheOff.median) },
    {
      name: "cold, cache on (miss)",
      color: "#e67e22",
      dash: "6 4",
      values: contexts.map((c) => c.ttftMs.cold.median),
    },
    {
      name: "SSD restore, page cache dropped",
      color: "#2874a6",
      values: contexts.map((c) => c.ttftMs.ssd.median),
    },
    {
      name: "after restart, page cache dropped",
      color: "#7d3c98",
      dash: "6 4",
      values: contexts.map((c) => c.ttftMs.restart.median),
    },
    { name: "RAM hit", color: "#1e8449", values: contexts.map((c) => c.ttftMs.ram.median) },
  ];
  const W = 860;
  const H = 460;
  const left = 80;
  const right = 310;
  const top = 50;
  const bottom = 60;
  const xs = contexts.map((c) => c.contextTokens);
  const all = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v) && v > 0);
  const yMin = 10 ** Math.floor(Math.log10(Math.min(...all, 10)));
  const yMax = 10 ** Math.ceil(Math.log10(Math.max(...all, 100)));
  const xMin = Math.min(...xs);
  const xMax = Math.max(...xs);
  const px = (x: number) =>
    xMax === xMin
      ? left + (W - left - right) / 2
      : left + ((Math.log2(x) - Math.log2(xMin)) / (Math.log2(xMax) - Math.log2(xMin))) * (W - left - right);
  const py = (y: number) =>
    top +
    (1 - (Math.log10(y) - Math.log10(yMin)) / (Math.log10(yMax) - Math.log10(yMin))) * (H - top - bottom);
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const label = (v: number) => (v >= 1000 ? `${v / 1000} s` : `${v} ms`);
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${left}" y="28" font-size="15" font-weight="bold">${esc(title)}</text>`,
  );
  for (let e = Math.log10(yMin); e <= Math.log10(yMax); e++) {
    const v = 10 ** e;
    const y = py(v).toFixed(1);
    parts.push(
      `<line x1="${left}" y1="${y}" x2="${W - right}" y2="${y}" stroke="#dddddd"/>`,
      `<text x="${left - 8}" y="${y}" text-anchor="end" dominant-baseline="middle">${label(v)}</text>`,
    );
  }
  for (const x of xs) {
    const X = px(x).toFixed(1);
    parts.push(
      `<line x1="${X}" y1="${top}" x2="${X}" y2="${H - bottom}" stroke="#eeeeee"/>`,
      `<text x="${X}" y="${H - bottom + 18}" text-anchor="middle">${x % 1024 === 0 ? `${x / 1024}k` : x}</text>`,
    );
  }
  parts.push(
    `<line x1="${left}" y1="${H - bottom}" x2="${W - right}" y2="${H - bottom}" stroke="#333333"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${H - bottom}" stroke="#333333"/>`,
    `<text x="${(left + W - right) / 2}" y="${H - 18}" text-anchor="middle">context length (tokens, log scale)</text>`,
    `<text transform="translate(20 ${(top + H - bottom) / 2}) rotate(-90)" text-anchor="middle">time to first token (median, log scale)</text>`,
  );
  series.forEach((s, i) => {
    const pts = s.values
      .map((v, j) => (Number.isFinite(v) && v > 0 ? `${px(xs[j]).toFixed(1)},${py(v).toFixed(1)}` : ""))
      .filter(Boolean);
    if (pts.length > 1) {
      parts.push(
        `<polyline points="${pts.join(" ")}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ""}/>`,
      );
    }
    for (const p of pts) {
      const [cx, cy] = p.split(",");
      parts.push(`<circle cx="${cx}" cy="${cy}" r="3.5" fill="${s.color}"/>`);
    }
    const ly = top + 10 + i * 22;
    parts.push(
      `<line x1="${W - right + 20}" y1="${ly}" x2="${W - right + 48}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ""}/>`,
      `<text x="${W - right + 54}" y="${ly}" dominant-baseline="middle">${esc(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
