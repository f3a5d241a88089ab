/**
 * Runs `npm run bench -- --quick` (the compiled bench/run.ts) end to end, so the benchmark code cannot
 * rot: its JSON, Markdown and SVG outputs must exist, be well formed and hold positive numbers. How fast
 * anything was is the benchmark's output, not an assertion here (test/README.md).
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const ROOT = path.resolve(__dirname, "../..");
const RUN = path.join(ROOT, "dist/bench/run.js");

interface Summary {
  median: number;
  n: number;
}

interface BenchJson {
  schema: string;
  mode: string;
  machine: { cpu: string; cores: number; ramGiB: number; node: string; kvparkCommit: string; disk: string };
  contexts: Array<{
    contextTokens: number;
    ttftMs: Record<"cold" | "coldCacheOff" | "resident" | "ram" | "ssd" | "restart", Summary>;
    clientTtftMs: Record<"cold" | "coldCacheOff" | "resident" | "ram" | "ssd" | "restart", Summary>;
    restoreMBps: number;
    ddMBps: number;
    restoreOverDd: number;
    persistTtftRatio: number;
    persistRequestRatio: number;
    prefillTokensPerSecond: number;
    decodeTokensPerSecond: number;
    ssdBytesPerToken: number;
    stages: Record<"resident" | "ram" | "ssd" | "restart", Record<string, number>>;
    restartRestoreMBps: number;
    warnings: string[];
  }>;
  concurrency: {
    summary: Array<{ streams: number; aggregateTokensPerSecond: number }>;
    busy: { promptTokens: number; longTtftMs: number; shortTtftMs: number; healthMs: { n: number } };
  };
  batching: {
    summary: {
      levels: Array<{
        streams: number;
        runs: number;
        aggregateTokensPerSecond: number;
        ratioToSingle: number;
        itlP50Ms: number;
        itlP99Ms: number;
        // null in JSON where the engine sent no report (NaN)
        rssBytesMax: number | null;
        memoryMaxBytes: number | null;
        procRssBytesMax: number;
      }>;
      goal: { streams: number; ratio: number; ratio8: number; met: boolean };
      busy: {
        streams: number;
        promptTokens: number;
        idleTtftMs: number;
        busyTtftMs: number;
        decodingAtFirstTokenMin: number;
      };
    };
  };
  tokenizer: { builds: Array<{ vocabSize: number; buildMs: { median: number; n: number } }> };
  replay: {
    turns: Array<{
      promptTokens: number;
      idealTokens: number;
      ramTokens: number;
      ssdTokens: number;
      serverTtftMs: number;
    }>;
    totals: { idealTokens: number; reusedTokens: number; reuseShareOfIdeal: number };
  };
  raw: {
    ttft: Array<Record<"resident" | "ram" | "ssd" | "restart", Array<{ stages: Record<string, number> }>>>;
    constrained: {
      decodeMsPerToken: Record<string, number>;
      vocabularies: Array<{
        logits: number;
        prepareMs: number;
        compileMs: Record<string, number>;
        perToken: { tokens: number; grammarMs: number; maskSampleMs: number; sampleMs: number };
      }>;
    };
  };
}

/** The stage columns of the ttft section's stage table (bench/lib/ttft-stages.ts). */
const STAGES = [
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
];

/** Checks that every element is closed in order: enough to catch a broken hand-written SVG. */
function checkXml(text: string): void {
  const stack: string[] = [];
  for (const m of text.matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (!closing) stack.push(name);
    else if (stack.pop() !== name) throw new Error(`SVG: </${name}> does not close the open element`);
  }
  expect(stack).toEqual([]);
}

describe("npm run bench -- --quick", () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-bench-test-"));
  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  it("writes JSON, Markdown and an SVG chart with positive numbers", () => {
    expect(fs.existsSync(RUN)).toBe(true); // built by `npm test`'s pretest (npx tsc -p tsconfig.json)
    const r = spawnSync(process.execPath, [RUN, "--quick", "--out", out], {
      encoding: "utf8",
      timeout: 280_000,
    });
    if (r.status !== 0) throw new Error(`bench exited with ${r.status}: ${r.stderr.slice(-4000)}`);
    expect(r.stderr).toMatch(/ttft 1024: cold run 1\/3/); // progress while it runs

    const json = JSON.parse(fs.readFileSync(path.join(out, "quick.json"), "utf8")) as BenchJson;
    expect(json.schema).toBe("kvpark-bench/1");
    expect(json.machine.cores).toBeGreaterThan(0);
    expect(json.machine.ramGiB).toBeGreaterThan(0);
    for (const field of ["cpu", "node", "kvparkCommit", "disk"] as const)
      expect(json.machine[field]).not.toBe("");

    expect(json.contexts.map((c) => c.contextTokens)).toEqual([1024, 2048]);
    for (const c of json.contexts) {
      for (const path of ["cold", "coldCacheOff", "resident", "ram", "ssd", "restart"] as const) {
        expect(c.ttftMs[path].n).toBeGreaterThan(0);
        expect(c.ttftMs[path].median).toBeGreaterThan(0);
        expect(c.clientTtftMs[path].median).toBeGreaterThan(0);
      }
      for (const v of [
        c.restoreMBps,
        c.ddMBps,
        c.restoreOverDd,
        c.persistTtftRatio,
        c.persistRequestRatio,
        c.prefillTokensPerSecond,
        c.decodeTokensPerSecond,
        c.ssdBytesPerToken,
      ]) {
        expect(v).toBeGreaterThan(0);
      }
      expect(c.warnings).toEqual([]);
      // Where a hit's TTFT goes: every stage present, the medians' sum near the median TTFT.
      for (const p of ["resident", "ram", "ssd", "restart"] as const) {
        const st = c.stages[p];
        for (const k of STAGES) expect(Number.isFinite(st[k])).toBe(true);
        expect(st.forwardMs).toBeGreaterThan(0);
        expect(st.sumMs).toBeGreaterThan(0.5 * st.clientTtftMs);
        expect(st.sumMs).toBeLessThan(2 * st.clientTtftMs);
      }
      expect(c.restartRestoreMBps).toBeGreaterThan(0);
    }
    // Per request: a next turn takes over the engine's last sequence and imports nothing; a RAM hit
    // imports RAM blocks only; an SSD hit's or a restart's restore reads, verifies, stages and
    // imports; the restore's parts fit inside it; the first token crossed to the front end and over
    // the wire.
    for (const c of json.raw.ttft) {
      for (const p of ["resident", "ram", "ssd", "restart"] as const) {
        for (const { stages: st } of c[p]) {
          const fromSsd = st.readWaitMs + st.verifyMs + st.stageMs + st.importMs;
          if (p === "resident") {
            expect(st.ramMs + fromSsd).toBe(0);
          } else if (p === "ram") {
            expect(st.ramMs).toBeGreaterThan(0);
            expect(fromSsd).toBe(0);
          } else {
            expect(st.ramMs).toBe(0);
            expect(st.verifyMs).toBeGreaterThan(0);
            expect(st.stageMs + st.importMs).toBeGreaterThan(0);
          }
          expect(st.restoreOtherMs).toBeGreaterThanOrEqual(-1e-9); // float rounding only
          expect(st.ipcMs).toBeGreaterThan(0);
          expect(st.wireMs).toBeGreaterThan(0);
          const sum = STAGES.reduce((a, k) => a + st[k], 0);
          expect(Math.abs(sum - st.clientTtftMs)).toBeLessThan(1e-6 * st.clientTtftMs);
        }
      }
    }
    expect(json.concurrency.summary.map((s) => s.streams)).toEqual([1, 4, 8]);
    for (const s of json.concurrency.summary) expect(s.aggregateTokensPerSecond).toBeGreaterThan(0);
    const busy = json.concurrency.busy;
    expect(busy.promptTokens).toBe(2048);
    expect(busy.longTtftMs).toBeGreaterThan(0);
    expect(busy.shortTtftMs).toBeGreaterThan(0);
    expect(Number.isInteger(busy.healthMs.n)).toBe(true);

    const batching = json.batching.summary;
    expect(batching.levels.map((l) => l.streams)).toEqual([1, 2, 4, 8, 16]);
    for (const l of batching.levels) {
      expect(l.runs).toBe(1);
      expect(l.aggregateTokensPerSecond).toBeGreaterThan(0);
      expect(l.itlP50Ms).toBeGreaterThan(0);
      expect(l.itlP99Ms).toBeGreaterThanOrEqual(l.itlP50Ms);
      expect(l.procRssBytesMax).toBeGreaterThan(0);
      // The engine's own report (Stats.engine), once the engine sends one; absent until then.
      if (l.memoryMaxBytes !== null) {
        expect(l.rssBytesMax).toBeGreaterThan(0);
        expect(l.memoryMaxBytes).toBeGreaterThan(0);
      } else expect(l.rssBytesMax).toBeNull();
    }
    expect(batching.levels[0].ratioToSingle).toBe(1);
    expect(batching.goal).toEqual({
      streams: 8,
      ratio: 4,
      ratio8: batching.levels[3].ratioToSingle,
      met: batching.levels[3].ratioToSingle >= 4,
    });
    expect(batching.busy.streams).toBe(8);
    expect(batching.busy.promptTokens).toBe(384);
    expect(batching.busy.idleTtftMs).toBeGreaterThan(0);
    expect(batching.busy.busyTtftMs).toBeGreaterThan(0);
    expect(batching.busy.decodingAtFirstTokenMin).toBeGreaterThanOrEqual(0);
    expect(batching.busy.decodingAtFirstTokenMin).toBeLessThanOrEqual(8);

    expect(json.tokenizer.builds.map((b) => b.vocabSize)).toEqual([512, 4000, 8192]);
    for (const b of json.tokenizer.builds) {
      expect(b.buildMs.n).toBe(3);
      expect(b.buildMs.median).toBeGreaterThan(0);
    }

    const { turns, totals } = json.replay;
    expect(turns.length).toBeGreaterThan(5);
    for (const t of turns) {
      expect(t.promptTokens).toBeGreaterThan(0);
      expect(t.serverTtftMs).toBeGreaterThan(0);
      expect(t.ramTokens + t.ssdTokens).toBeLessThanOrEqual(t.promptTokens - 1);
    }
    expect(turns.some((t) => t.ssdTokens > 0)).toBe(true); // the restart makes the SSD tier serve
    expect(totals.idealTokens).toBeGreaterThan(0);
    expect(totals.reuseShareOfIdeal).toBeGreaterThan(0);
    expect(totals.reuseShareOfIdeal).toBeLessThanOrEqual(1);

    const constrained = json.raw.constrained;
    expect(Object.keys(constrained.decodeMsPerToken)).toEqual([
      "none",
      "json_schema",
      "json_string",
      "tool_call",
    ]);
    for (const v of Object.values(constrained.decodeMsPerToken)) expect(v).toBeGreaterThan(0);
    // The run's model (its config's vocab_size rows of logits), then a Qwen-sized vocabulary.
    const vocabSize = JSON.parse(
      fs.readFileSync(path.join(ROOT, ".kvpark/models/small/config.json"), "utf8"),
    ).vocab_size;
    expect(constrained.vocabularies.map((v) => v.logits)).toEqual([vocabSize, 151936]);
    for (const v of constrained.vocabularies) {
      expect(v.prepareMs).toBeGreaterThan(0);
      for (const ms of Object.values(v.compileMs)) expect(ms).toBeGreaterThan(0);
      expect(v.perToken.tokens).toBeGreaterThan(0);
      expect(v.perToken.maskSampleMs).toBeGreaterThan(0);
    }

    const md = fs.readFileSync(path.join(out, "quick.md"), "utf8");
    expect(md).toContain("npm run bench -- --quick");
    expect(md).toMatch(/\| 1k \(1,024\) \| [\d,.]+ m?s \|/);
    expect(md).toContain("### Where a hit's TTFT goes");
    for (const p of ["next turn", "RAM hit", "SSD hit", "after restart"])
      expect(md).toMatch(new RegExp(`\\| 2,048 \\| ${p} \\| [\\d,.]+ \\|`));
    expect(md).toContain("### Agent-session replay");
    expect(md).toContain("### Tokenizer generation");
    expect(md).toContain("### Structured outputs (constrained decoding)");
    expect(md).toMatch(/\| 4,000 tokens \| [\d,.]+ m?s \|/);
    expect(md).toMatch(/While the engine prefilled a cold 2,048-token prompt .*: health checks/);
    expect(md).toContain("### Continuous batching: decode by concurrent streams");
    expect(md).toMatch(
      /\| 8 \| [\d,.]+ \| [\d,.]+x \(goal >= 4x: (met|not met)\) \| [\d,.]+ m?s \/ [\d,.]+ m?s \|/,
    );
    expect(md).toMatch(
      /A new request \(a never-seen 384-token prompt\) sent while 8 streams decode: first token after [\d,.]+ m?s/,
    );
    expect(md).toContain(`Machine: ${json.machine.cpu}, ${json.machine.cores} cores`);

    const svg = fs.readFileSync(path.join(out, "quick-ttft.svg"), "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
    checkXml(svg);
    expect((svg.match(/<polyline /g) ?? []).length).toBe(5);
  }, 300_000);
});
