/**
 * Where a cache hit's time to first token goes, stage by stage, from what the server returns to
 * every client (GenerateFinished.timings) and the bench's own clock. Each sample's stages add up to
 * its client-measured TTFT exactly: the last engine stage and the wire take what the others leave.
 */
import type { BenchTimings } from "./client";
import type { ContextSummary } from "./report";
import { fmt, median } from "./util";

/** One request's stages, in ms. */
export interface StageTimes {
  /** Arrival at the front end to the engine starting on it (front end to engine IPC and queue). */
  queueMs: number;
  /** Looking the prompt up in every tier. */
  lookupMs: number;
  /** Concatenating and importing RAM blocks. */
  ramMs: number;
  /** Waiting for SSD and shared-tier reads not hidden behind other work. */
  readWaitMs: number;
  /** Checking stored blocks. */
  verifyMs: number;
  /** Writing the staging file and loading it into MLX. */
  stageMs: number;
  /** Importing loaded blocks into the sequence. */
  importMs: number;
  /** The rest of the restore (planning, batching, bookkeeping between the stages above). */
  restoreOtherMs: number;
  /** The suffix's prefill and sampling the first token. */
  forwardMs: number;
  /** The rest of the server's TTFT: between the restore's end and the first forward (scheduling). */
  engineOtherMs: number;
  /** The first token from the engine to the front end. */
  ipcMs: number;
  /** Client TTFT less the server's TTFT and the IPC: gRPC out and back, on the wire and in both stacks. */
  wireMs: number;
  /** The bench's own TTFT: its call to the first token received. */
  clientTtftMs: number;
}

export const STAGE_KEYS = [
  "queueMs",
  "lookupMs",
  "ramMs",
  "readWaitMs",
  "verifyMs",
  "stageMs",
  "importMs",
  "restoreOtherMs",
  "forwardMs",
  "engineOtherMs",
  "ipcMs",
  "wireMs",
] as const satisfies ReadonlyArray<keyof StageTimes>;

const STAGE_NAMES: Record<(typeof STAGE_KEYS)[number], string> = {
  queueMs: "to engine (queue)",
  lookupMs: "lookup",
  ramMs: "RAM import",
  readWaitMs: "read wait",
  verifyMs: "verify",
  stageMs: "stage",
  importMs: "import",
  restoreOtherMs: "restore, rest",
  forwardMs: "forward (suffix + first token)",
  engineOtherMs: "engine, rest",
  ipcMs: "engine to front end",
  wireMs: "first delta on the wire",
};

export function stageTimes(t: BenchTimings, clientTtftMs: number): StageTimes {
  const readWaitMs = t.restoreSsdReadWaitMs + t.restoreSharedReadWaitMs;
  const restoreParts = t.restoreRamMs + readWaitMs + t.restoreVerifyMs + t.restoreStageMs + t.restoreImportMs;
  return {
    queueMs: t.queueMs,
    lookupMs: t.lookupMs,
    ramMs: t.restoreRamMs,
    readWaitMs,
    verifyMs: t.restoreVerifyMs,
    stageMs: t.restoreStageMs,
    importMs: t.restoreImportMs,
    restoreOtherMs: t.restoreMs - restoreParts,
    forwardMs: t.prefillMs,
    engineOtherMs: t.ttftMs - t.queueMs - t.lookupMs - t.restoreMs - t.prefillMs,
    ipcMs: t.firstTokenIpcMs,
    wireMs: clientTtftMs - t.ttftMs - t.firstTokenIpcMs,
    clientTtftMs,
  };
}

/** Per-stage medians of one path at one context length. */
export type StageSummary = Record<keyof StageTimes, number> & {
  runs: number;
  /** Sum of the stage medians (next to the median client TTFT). */
  sumMs: number;
};

export function summarizeStages(xs: StageTimes[]): StageSummary {
  const out = { runs: xs.length } as StageSummary;
  for (const k of [...STAGE_KEYS, "clientTtftMs"] as const) out[k] = median(xs.map((x) => x[k]));
  out.sumMs = STAGE_KEYS.reduce((a, k) => a + out[k], 0);
  return out;
}

export interface StageRow {
  contextTokens: number;
  path: string;
  stages: StageSummary;
  /** Restore MB/s (KV bytes read from SSD over the restore) and `dd iflag=direct` MB/s of as many bytes. */
  restoreMBps?: number;
  ddMBps?: number;
}

const cell = (x: number) => (Number.isFinite(x) ? fmt(x, x < 10 ? 1 : 0) : "n/a");

/** The Markdown table: one row per context length and path. */
export function stagesTable(rows: StageRow[]): string {
  const out: string[] = [];
  out.push(
    `| context | path | ${STAGE_KEYS.map((k) => STAGE_NAMES[k]).join(" | ")} | sum | client TTFT | restore MB/s / dd MB/s |`,
  );
  out.push(`| ---: | --- | ${STAGE_KEYS.map(() => "---:").join(" | ")} | ---: | ---: | ---: |`);
  for (const r of rows) {
    const s = r.stages;
    const mbps =
      r.restoreMBps !== undefined && r.ddMBps !== undefined
        ? `${fmt(r.restoreMBps)} / ${fmt(r.ddMBps)} (${fmt(r.restoreMBps / r.ddMBps, 2)})`
        : "";
    out.push(
      `| ${fmt(r.contextTokens)} | ${r.path} | ${STAGE_KEYS.map((k) => cell(s[k])).join(" | ")} | ` +
        `${cell(s.sumMs)} | ${cell(s.clientTtftMs)} | ${mbps} |`,
    );
  }
  return out.join("\n");
}

function stageRows(c: ContextSummary): StageRow[] {
  const L = c.contextTokens;
  return [
    { contextTokens: L, path: "next turn", stages: c.stages.resident },
    { contextTokens: L, path: "RAM hit", stages: c.stages.ram },
    { contextTokens: L, path: "SSD hit", stages: c.stages.ssd, restoreMBps: c.restoreMBps, ddMBps: c.ddMBps },
    {
      contextTokens: L,
      path: "after restart",
      stages: c.stages.restart,
      restoreMBps: c.restartRestoreMBps,
      ddMBps: c.ddMBps,
    },
  ];
}

/** The ttft section's stage table with its heading and legend. */
export function stagesSection(contexts: ContextSummary[]): string {
  return [
    "### Where a hit's TTFT goes",
    "",
    "Client-measured TTFT by stage, ms, median of each stage over the runs (each run's stages add up to its TTFT exactly; " +
      "the medians' sum is beside the median TTFT). From `GenerateFinished.timings`: to engine = arrival at the front end " +
      "to the engine starting on the request; lookup; the restore's RAM import, read wait (SSD reads not hidden behind " +
      "other work), verify, stage (staging file into MLX), import, and the rest of the restore; forward = the suffix's " +
      "prefill and the first token; engine, rest = the server's TTFT less all that; engine to front end = the first " +
      "token's IPC (`first_token_ipc_ms`); first delta on the wire = the bench's TTFT less the server's and the IPC. " +
      "Restore MB/s against `dd iflag=direct` of as many bytes of the store's files (after a restart, against the " +
      "SSD rows' dd), and their ratio: a ratio of medians, where the restore table below gives the median of each run's ratio.",
    "",
    stagesTable(contexts.flatMap(stageRows)),
  ].join("\n");
}
