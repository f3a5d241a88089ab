/**
 * kvpark's benchmark: one command for the performance table.
 *
 *   npm run bench -- --quick     small preset, 1k and 2k contexts (a couple of minutes; CI runs it)
 *   npm run bench -- --full      qwen2.5-0.5b shape, 1k/2k/4k/8k contexts (about 40 minutes on 2 cores)
 *
 * Options: --out DIR, --model DIR (a model directory; default .kvpark/models/<preset>, generated if
 * missing), --preset NAME, --contexts 1024,2048, --cold-runs N, --sections tokenizer,store,reopen,ttft,concurrency,batching,replay,constrained,agent
 * (add `engine` for the in-process prefill/decode microbenchmark, `peer` for llama.cpp side by side with
 * it and the memory-bandwidth floors, `shared` for the shared tier on a local redis-server: node B's TTFT
 * from Redis against recompute and a local SSD hit, beside redis-benchmark), --work-dir DIR (on the disk to
 * measure, not a tmpfs), --seed N, --keep (leave the work directory). Progress goes to stderr; results
 * to <out>/<mode>.json, <out>/<mode>.md and <out>/<mode>-ttft.svg.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { runStoreRestore, type StoreRestoreResult } from "./store/restore";
import { describeMachine, engineEnv } from "./lib/machine";
import { ensureModel, readModel } from "./lib/model";
import {
  markdown,
  summarizeConcurrency,
  summarizeContext,
  ttftChart,
  type ContextSummary,
  type EngineResult,
} from "./lib/report";
import { dropPageCache, pageCacheDropWorks, Progress } from "./lib/util";
import { runBatching, type BatchingResult } from "./sections/batching";
import { runConcurrency, type ConcurrencyResult } from "./sections/concurrency";
import { runConstrained, type ConstrainedResult } from "./sections/constrained";
import { runReplay, type ReplayResult } from "./sections/replay";
import { runAgent, type AgentResult } from "./sections/agent";
import { runReopen, type ReopenResult } from "./sections/reopen";
import { runPeer, type PeerResult } from "./sections/peer";
import { runShared, type SharedResult } from "./sections/shared";
import { runTokenizer, type TokenizerResult } from "./sections/tokenizer";
import { runTtft, type ContextResult } from "./sections/ttft";

const REPO = path.resolve(__dirname, "../..");

interface Plan {
  mode: "quick" | "full";
  preset: string;
  contexts: number[];
  coldRuns: Record<number, number> | number;
  ramRuns: number;
  ssdRuns: number;
  restartRuns: number;
  decodeTokens: number;
  concurrency: {
    streams: number[];
    runs: number;
    prefixTokens: number;
    decodeTokens: number;
    busyPromptTokens: number;
  };
  batching: {
    streams: number[];
    runs: number;
    promptTokensMin: number;
    promptTokensMax: number;
    decodeTokens: number;
    busyStreams: number;
    probeTokens: number;
  };
  replay: { scale: number; rounds: number; answerTokens: number; ramTokens: number };
  store: { runs: number; targetBytes: number };
  tokenizer: { vocabSizes: number[]; runs: number };
  reopen: { blocks: number; runs: number };
  constrained: { runs: number; decodeTokens: number; samples: number };
  agent: { turns: number; runs: number; toolResultWords: number };
  shared: { runs: number };
}

const PLANS: Record<"quick" | "full", Plan> = {
  quick: {
    mode: "quick",
    preset: "small",
    contexts: [1024, 2048],
    coldRuns: 3,
    ramRuns: 3,
    ssdRuns: 3,
    restartRuns: 2,
    decodeTokens: 16,
    concurrency: { streams: [1, 4, 8], runs: 1, prefixTokens: 256, decodeTokens: 16, busyPromptTokens: 2048 },
    batching: {
      streams: [1, 2, 4, 8, 16],
      runs: 1,
      promptTokensMin: 192,
      promptTokensMax: 512,
      decodeTokens: 24,
      busyStreams: 8,
      probeTokens: 384,
    },
    replay: { scale: 0.3, rounds: 6, answerTokens: 8, ramTokens: 3072 },
    store: { runs: 1, targetBytes: 25e6 },
    tokenizer: { vocabSizes: [512, 4000, 8192], runs: 3 },
    reopen: { blocks: 100_000, runs: 1 },
    constrained: { runs: 3, decodeTokens: 48, samples: 10 },
    agent: { turns: 6, runs: 1, toolResultWords: 40 },
    shared: { runs: 3 },
  },
  full: {
    mode: "full",
    preset: "qwen2.5-0.5b",
    contexts: [1024, 2048, 4096, 8192],
    // A cold 8k-token prefill takes about four minutes here: two runs each with the cache on and off.
    coldRuns: { 1024: 3, 2048: 3, 4096: 3, 8192: 2 },
    ramRuns: 3,
    ssdRuns: 3,
    restartRuns: 2,
    decodeTokens: 16,
    concurrency: { streams: [1, 4, 8], runs: 2, prefixTokens: 512, decodeTokens: 24, busyPromptTokens: 2048 },
    // A run of all five levels (32 tokens per stream) takes one to two minutes here with continuous
    // batching, and 2.5 at the 6.5 tokens/s the engine decoded before it: three runs fit the budget.
    batching: {
      streams: [1, 2, 4, 8, 16],
      runs: 3,
      promptTokensMin: 192,
      promptTokensMax: 512,
      decodeTokens: 32,
      busyStreams: 8,
      probeTokens: 384,
    },
    replay: { scale: 0.5, rounds: 6, answerTokens: 12, ramTokens: 6144 },
    store: { runs: 3, targetBytes: 100e6 },
    tokenizer: { vocabSizes: [512, 4000, 8192], runs: 5 },
    reopen: { blocks: 100_000, runs: 3 },
    constrained: { runs: 3, decodeTokens: 48, samples: 20 },
    agent: { turns: 8, runs: 3, toolResultWords: 120 },
    shared: { runs: 3 },
  },
};

const DEFAULT_SECTIONS = [
  "tokenizer",
  "store",
  "reopen",
  "ttft",
  "concurrency",
  "batching",
  "replay",
  "constrained",
  "agent",
];
// The in-process forward-pass benchmark and the llama.cpp peer (needs node-llama-cpp, a
// devDependency, and about 1 GB of GGUF) run only when asked for.
// The shared tier needs redis-server and redis-benchmark (Debian's redis-server and redis-tools).
const ALL_SECTIONS = [...DEFAULT_SECTIONS, "engine", "peer", "shared"];
// The peer comparison is about the real model's shape, also in a quick run (which only shortens
// the contexts), unless --preset/--model say otherwise.
const PEER_PRESET = "qwen2.5-0.5b";

function usage(): never {
  process.stderr.write(
    (fs.readFileSync(__filename, "utf8").match(/\/\*\*([\s\S]*?)\*\//)?.[1] ?? "")
      .replace(/^ \* ?/gm, "")
      .trim() + "\n",
  );
  process.exit(2);
}

interface Args {
  mode: "quick" | "full";
  out?: string;
  model?: string;
  preset?: string;
  contexts?: number[];
  coldRuns?: number;
  sections: string[];
  workDir?: string;
  seed: number;
  keep: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { mode: "full", sections: DEFAULT_SECTIONS, seed: 7, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case "--quick":
        a.mode = "quick";
        break;
      case "--full":
        a.mode = "full";
        break;
      case "--out":
        a.out = value();
        break;
      case "--model":
        a.model = value();
        break;
      case "--preset":
        a.preset = value();
        break;
      case "--contexts":
        a.contexts = value().split(",").map(Number);
        if (a.contexts.some((n) => !Number.isInteger(n) || n < 2))
          throw new Error("--contexts: integers >= 2");
        break;
      case "--cold-runs":
        a.coldRuns = Number(value());
        if (!Number.isInteger(a.coldRuns) || a.coldRuns < 2) throw new Error("--cold-runs: an integer >= 2");
        break;
      case "--sections":
        a.sections = value().split(",");
        for (const s of a.sections) if (!ALL_SECTIONS.includes(s)) throw new Error(`unknown section ${s}`);
        break;
      case "--work-dir":
        a.workDir = value();
        break;
      case "--seed":
        a.seed = Number(value());
        break;
      case "--keep":
        a.keep = true;
        break;
      case "--help":
      case "-h":
        usage();
        break;
      default:
        throw new Error(`unknown option ${arg} (see --help)`);
    }
  }
  return a;
}

/** Numbers of several context lengths, e.g. "191% / 193%". */
function list(values: number[], unit = "%"): string {
  return values.length > 0 && values.every(Number.isFinite)
    ? values.map((v) => `${v.toFixed(0)}${unit}`).join(" / ")
    : "n/a";
}

function fsType(dir: string): string {
  const r = spawnSync("df", ["--output=fstype", dir], { encoding: "utf8" });
  return r.stdout.split("\n")[1]?.trim() ?? "";
}

/** The in-process prefill/decode microbenchmark (bench/model/prefill-decode.ts) in a child process. */
function runEngine(
  modelDir: string,
  preset: string,
  contexts: number[],
  out: string,
  progress: Progress,
): EngineResult {
  progress.log(`engine: in-process prefill/decode at ${contexts.join(", ")} tokens`);
  const r = spawnSync(
    process.execPath,
    [
      "--expose-gc",
      path.join(__dirname, "model/prefill-decode.js"),
      "--preset",
      preset,
      "--dir",
      modelDir,
      "--contexts",
      contexts.join(","),
      "--out",
      out,
    ],
    {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "inherit"],
      env: engineEnv(),
    },
  );
  if (r.status !== 0) throw new Error("prefill-decode benchmark failed");
  return JSON.parse(fs.readFileSync(out, "utf8")) as EngineResult;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const plan = { ...PLANS[args.mode] };
  if (args.preset) plan.preset = args.preset;
  if (args.contexts) plan.contexts = args.contexts;
  if (args.coldRuns) plan.coldRuns = args.coldRuns;
  const progress = new Progress();
  const started = new Date();
  const outDir = path.resolve(
    args.out ?? path.join(REPO, "bench/results", args.mode === "quick" ? "tmp" : ""),
  );
  fs.mkdirSync(outDir, { recursive: true });
  const workDir = path.resolve(args.workDir ?? fs.mkdtempSync(path.join(os.tmpdir(), "kvpark-bench-")));
  fs.mkdirSync(workDir, { recursive: true });
  const modelDir = path.resolve(args.model ?? path.join(REPO, ".kvpark/models", plan.preset));
  ensureModel(plan.preset, modelDir, args.model === undefined, (m) => progress.log(m));
  const model = readModel(plan.preset, modelDir);
  const tokenLimit = Math.min(8000, model.tokenizerVocab - 16);
  const machine = describeMachine(REPO, workDir);
  const command = ["npm run bench --", ...process.argv.slice(2)].join(" ");
  const coldRuns = (L: number) =>
    typeof plan.coldRuns === "number"
      ? plan.coldRuns
      : (plan.coldRuns[L] ?? Math.min(...Object.values(plan.coldRuns)));

  progress.log(
    `kvpark bench (${args.mode}): model ${plan.preset} at ${modelDir}, contexts ${plan.contexts.join(", ")}, ` +
      `sections ${args.sections.join(", ")}; work dir ${workDir} (${fsType(workDir)}); results in ${outDir}`,
  );
  const notes: string[] = [];
  if (fsType(workDir) === "tmpfs")
    notes.push(`The work directory ${workDir} is a tmpfs: SSD numbers are RAM numbers.`);
  dropPageCache();
  machine.pageCacheDrop = pageCacheDropWorks()
    ? "sync; echo 3 > /proc/sys/vm/drop_caches before every cold read"
    : "NOT available (not root): 'page cache dropped' numbers are warm-cache numbers";

  let store: StoreRestoreResult | undefined;
  let ttft: ContextResult[] = [];
  let concurrency: ConcurrencyResult | undefined;
  let batching: BatchingResult | undefined;
  let replay: ReplayResult | undefined;
  let engine: EngineResult | undefined;
  let tokenizer: TokenizerResult | undefined;
  let reopen: ReopenResult | undefined;
  let constrained: ConstrainedResult | undefined;
  let agent: AgentResult | undefined;
  let peer: PeerResult | undefined;
  let shared: SharedResult | undefined;
  try {
    if (args.sections.includes("tokenizer")) {
      tokenizer = runTokenizer({ ...plan.tokenizer, progress });
    }
    if (args.sections.includes("store")) {
      store = await runStoreRestore({
        runs: plan.store.runs,
        dir: workDir,
        readThreads: 8,
        targetBytes: plan.store.targetBytes,
        log: (m) => progress.log(m),
      });
    }
    if (args.sections.includes("reopen")) {
      reopen = await runReopen({ ...plan.reopen, dir: workDir, progress });
    }
    if (args.sections.includes("ttft")) {
      ttft = await runTtft({
        model,
        contexts: plan.contexts,
        coldRuns,
        ramRuns: plan.ramRuns,
        ssdRuns: plan.ssdRuns,
        restartRuns: plan.restartRuns,
        decodeTokens: plan.decodeTokens,
        workDir,
        progress,
        tokenLimit,
      });
    }
    if (args.sections.includes("concurrency")) {
      concurrency = await runConcurrency({ model, ...plan.concurrency, workDir, progress, tokenLimit });
    }
    if (args.sections.includes("batching")) {
      batching = await runBatching({ model, ...plan.batching, workDir, progress, tokenLimit });
    }
    if (args.sections.includes("replay")) {
      replay = await runReplay({ model, seed: args.seed, ...plan.replay, workDir, progress });
    }
    if (args.sections.includes("constrained")) {
      constrained = runConstrained({ ...plan.constrained, modelDir, preset: plan.preset, workDir, progress });
    }
    if (args.sections.includes("agent")) {
      agent = await runAgent({ model, ...plan.agent, workDir, progress });
    }
    if (args.sections.includes("engine")) {
      engine = runEngine(modelDir, plan.preset, plan.contexts, path.join(workDir, "engine.json"), progress);
    }
    if (args.sections.includes("peer")) {
      const peerPreset = args.preset ?? PEER_PRESET;
      const peerDir = args.model ? modelDir : path.join(REPO, ".kvpark/models", peerPreset);
      ensureModel(peerPreset, peerDir, args.model === undefined, (m) => progress.log(m));
      peer = await runPeer({
        modelDir: peerDir,
        preset: peerPreset,
        contexts: plan.contexts,
        decodeTokens: plan.decodeTokens,
        serverPrefill: new Map(
          ttft.map((r) => [r.contextTokens, summarizeContext(r, model).prefillTokensPerSecond]),
        ),
        workDir,
        progress,
      });
    }
    if (args.sections.includes("shared")) {
      shared = await runShared({
        model,
        contexts: plan.contexts,
        runs: plan.shared.runs,
        workDir,
        progress,
        tokenLimit,
      });
    }
  } finally {
    if (!args.keep) fs.rmSync(workDir, { recursive: true, force: true });
  }

  machine.loadAverageAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  const wallSeconds = progress.elapsedSeconds();
  const contexts: ContextSummary[] = ttft.map((r) => summarizeContext(r, model));
  // Spread of per-token prefill time between the fastest and slowest cold run, per context length.
  const spreads = ttft.map((r) => {
    const perToken = [...r.cold, ...r.coldCacheOff].map((s) => s.prefillMs / s.recomputedTokens);
    return Math.max(...perToken) / Math.min(...perToken);
  });
  if (ttft.length > 0)
    notes.push(
      `Each context length runs on two fresh servers, warmed up alike with a short request: one with the cache off, and one ` +
        `whose RAM tier holds exactly one prompt of that length, so persisting the next prompt ` +
        `pushes the previous one out of RAM; SSD samples restore a prompt found on SSD only. Cold runs per context: ` +
        `${plan.contexts.map((L) => `${L}: ${coldRuns(L)}`).join(", ")} with the cache on and as many with it off; ` +
        `${plan.ramRuns} RAM hits per cold run; ${plan.ssdRuns} SSD restores; ${plan.restartRuns} restarts. Medians.`,
      `Page cache: ${machine.pageCacheDrop}. SSD writes: --ssd-fsync batch (the default: a block counts as persisted after fdatasync).`,
      `TTFT always includes computing the prompt's last token (its logits give the first generated token) and, ` +
        `for every path, the lookup; prompts are random token ids, one generated token per TTFT request.`,
      `Noise: ${machine.cores} shared cores; other work ran on this machine during the run (load average above). ` +
        `During cold prefills the engine process got a median ${list(contexts.map((c) => c.coldEngineCpuPercent))} ` +
        `and at worst ${list(contexts.map((c) => c.coldEngineCpuPercentMin))} of one core (per context length; ` +
        `${machine.cores * 100}% = all cores); the slowest cold run of a context length took ` +
        `${spreads.length ? spreads.map((x) => `${x.toFixed(2)}x`).join(" / ") : "n/a"} as long per token as the fastest. ` +
        `Ratios come from requests made side by side, alternating which side goes first; the persist cost is also given ` +
        `in engine CPU time, which other work on the machine barely moves. "After restart" is the first request of a new ` +
        `server process, so it includes that process's one-time costs.`,
      `Control: a RAM hit right after dropping the page cache took ${list(
        contexts.map((c) => c.ramAfterDropMs),
        " ms",
      )} ` +
        `against ${list(
          contexts.map((c) => c.ttftMs.ram.median),
          " ms",
        )} for RAM hits in general: dropping the page cache costs ` +
        `the server nothing besides the KV reads (the weights are in its own memory).`,
    );
  const storeNote = store
    ? `About ${((store.results[0]?.totalBytes ?? 0) / 1e6).toFixed(0)} MB of KV blocks of the qwen2.5-0.5b shape (64 tokens, float32; ` +
      `whole blocks, and the same bytes as per-layer blocks), written and read back ` +
      `with the page cache ${store.coldCache ? "dropped" : "WARM (not root)"} before every read; median of ${store.runs} run(s); ` +
      `the store reads with ${store.readThreads} threads (bench/store/restore.ts).`
    : undefined;
  const report = {
    mode: args.mode,
    command,
    machine,
    model,
    wallSeconds,
    notes,
    contexts,
    concurrency: concurrency
      ? {
          summary: summarizeConcurrency(concurrency),
          contextTokens: concurrency.contextTokens,
          decodeTokens: concurrency.decodeTokens,
          busy: concurrency.busy,
        }
      : undefined,
    batching: batching
      ? {
          summary: batching.summary,
          promptTokens: batching.promptTokens,
          decodeTokens: batching.decodeTokens,
        }
      : undefined,
    batchingTable: batching?.table,
    replay,
    storeTable: store?.table,
    storeNote,
    engine,
    tokenizer,
    reopenTable: reopen?.table,
    constrainedTable: constrained?.table,
    agentTable: agent
      ? `A scripted agent calls a named tool every turn (forced by constrained decoding) and gets a tool result of ${agent.toolResultWords} lines back; ` +
        `server-measured TTFT per turn, median of ${agent.runs} run(s), the same conversation on a server with the cache and one without:\n\n${agent.table}`
      : undefined,
  };
  let md = peer
    ? `${markdown(report)}\n\n### llama.cpp side by side, and memory-bandwidth floors\n\n${peer.markdown}\n`
    : markdown(report);
  if (shared)
    md += `\n\n### Shared tier on Redis: node B against recompute and a local SSD hit\n\n${shared.markdown}\n`;
  const json = {
    schema: "kvpark-bench/1",
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    plan,
    ...report,
    model: { ...model, dir: path.relative(REPO, model.dir) || model.dir },
    raw: {
      ttft,
      concurrency,
      batching: batching ? { runs: batching.runs, probes: batching.probes } : undefined,
      store: store ? { ...store, table: undefined } : undefined,
      reopen: reopen ? { ...reopen, table: undefined } : undefined,
      constrained: constrained ? { ...constrained, table: undefined } : undefined,
      agent: agent ? { ...agent, table: undefined } : undefined,
      peer: peer ? { ...peer, markdown: undefined } : undefined,
      shared: shared ? { ...shared, markdown: undefined } : undefined,
    },
  };
  const base = path.join(outDir, args.mode);
  fs.writeFileSync(`${base}.json`, JSON.stringify(json, null, 2) + "\n");
  fs.writeFileSync(`${base}.md`, md + "\n");
  if (contexts.length > 0) {
    fs.writeFileSync(
      `${base}-ttft.svg`,
      ttftChart(
        contexts,
        `kvpark TTFT by context length: ${plan.preset} shape, ${machine.cores} cores (${args.mode} run)`,
      ),
    );
  }
  progress.log(
    `done in ${(wallSeconds / 60).toFixed(1)} min: ${base}.json, ${base}.md${contexts.length ? `, ${base}-ttft.svg` : ""}`,
  );
  process.stdout.write(md + "\n");
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
