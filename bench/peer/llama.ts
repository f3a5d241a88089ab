/**
 * llama.cpp through node-llama-cpp (pinned): loads a GGUF on the CPU and measures a cold prefill,
 * decode steps, a state save, and a restore with the page cache dropped.
 *
 * The package is not a dependency of kvpark: with its prebuilt binaries for every GPU flavour it
 * would add about 700 MB to every install, for a section `npm test` never runs. The section installs
 * it on first use into a cache directory of its own, with only the CPU binary of this platform.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { dropPageCache } from "../lib/util";

/** node-llama-cpp version the numbers are taken with. */
export const NODE_LLAMA_CPP_VERSION = "3.21.1";

/** The part of node-llama-cpp's API the section uses (its own types are not installed with kvpark). */
interface LlamaModule {
  getLlama(options: {
    gpu: false;
    build: "never";
    maxThreads: number;
    logLevel: unknown;
    progressLogs: boolean;
  }): Promise<Llama>;
  LlamaLogLevel: { error: unknown };
}
interface Llama {
  loadModel(options: { modelPath: string; gpuLayers: number; useMmap: boolean }): Promise<LlamaModel>;
  readonly systemInfo: string;
  readonly llamaCppRelease: { release: string };
  dispose(): Promise<void>;
}
interface LlamaModel {
  createContext(options: {
    contextSize: number;
    batchSize: number;
    threads: number;
    sequences?: number;
  }): Promise<LlamaContext>;
  tokenize(text: string): number[];
  dispose(): Promise<void>;
}
interface LlamaContext {
  getSequence(): LlamaSequence;
  dispose(): Promise<void>;
}
interface LlamaSequence {
  evaluate(tokens: number[], options: { temperature: number }): AsyncGenerator<number, void, void>;
  readonly nextTokenIndex: number;
  saveStateToFile(file: string): Promise<{ fileSize: number }>;
  clearHistory(): Promise<void>;
  loadStateFromFile(file: string, options: { acceptRisk: boolean }): Promise<void>;
}

/** The platform packages node-llama-cpp ships its CPU binaries in. */
const CPU_BINARY: Record<string, string> = {
  "linux-x64": "@node-llama-cpp/linux-x64",
  "linux-arm64": "@node-llama-cpp/linux-arm64",
  "darwin-arm64": "@node-llama-cpp/mac-arm64-metal",
  "darwin-x64": "@node-llama-cpp/mac-x64",
};

/**
 * node-llama-cpp's entry, installed on first use under the user's cache directory (from the npm
 * registry, scripts off: its postinstall would try to download or build, the prebuilt binary is
 * already in the platform package).
 */
function installedEntry(log: (m: string) => void): string {
  const dir = path.join(
    process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"),
    "kvpark-bench",
    `node-llama-cpp-${NODE_LLAMA_CPP_VERSION}`,
  );
  const entry = path.join(dir, "node_modules", "node-llama-cpp", "dist", "index.js");
  if (fs.existsSync(entry)) return entry;
  const binary = CPU_BINARY[`${process.platform}-${process.arch}`];
  if (!binary)
    throw new Error(`no prebuilt node-llama-cpp CPU binary for ${process.platform}-${process.arch}`);
  log(`peer: installing node-llama-cpp ${NODE_LLAMA_CPP_VERSION} into ${dir}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ private: true }));
  execFileSync(
    "npm",
    [
      "install",
      "--prefix",
      dir,
      "--ignore-scripts",
      "--omit=optional",
      "--no-audit",
      "--no-fund",
      `node-llama-cpp@${NODE_LLAMA_CPP_VERSION}`,
      `${binary}@${NODE_LLAMA_CPP_VERSION}`,
    ],
    { stdio: "inherit" },
  );
  return entry;
}

// node-llama-cpp is an ES module and this project compiles to CommonJS, where TypeScript would turn
// `import()` into `require()` (which cannot load ES modules on Node 20). A real dynamic import
// has to come from outside TypeScript's view.
const importEsm = new Function("specifier", "return import(specifier)") as (
  specifier: string,
) => Promise<LlamaModule>;

/** A loaded model with the thread count every context uses. */
export interface LlamaPeer {
  llama: Llama;
  model: LlamaModel;
  threads: number;
  vocabSize: number;
  buildInfo: string;
  dispose(): Promise<void>;
}

/**
 * Loads `ggufFile` with the prebuilt CPU binary (no GPU, never compiles). Weights are read into
 * process memory rather than mmapped, so dropping the page cache later evicts only what a restore
 * reads, as with kvpark's server, which holds its weights in its own memory.
 */
export async function loadPeer(
  ggufFile: string,
  vocabSize: number,
  log: (m: string) => void,
): Promise<LlamaPeer> {
  const { getLlama, LlamaLogLevel } = await importEsm(pathToFileURL(installedEntry(log)).href);
  const threads = os.availableParallelism();
  const llama = await getLlama({
    gpu: false,
    build: "never",
    maxThreads: threads,
    logLevel: LlamaLogLevel.error,
    progressLogs: false,
  });
  const model = await llama.loadModel({ modelPath: ggufFile, gpuLayers: 0, useMmap: false });
  const info = llama.systemInfo.replace(/\s+/g, " ").trim();
  return {
    llama,
    model,
    threads,
    vocabSize,
    buildInfo: `node-llama-cpp ${NODE_LLAMA_CPP_VERSION}, llama.cpp ${llama.llamaCppRelease.release}, ${info}`,
    async dispose() {
      await model.dispose();
      await llama.dispose();
    },
  };
}

/** One context length's llama.cpp figures. */
export interface PeerContextResult {
  contextTokens: number;
  /** Cold prefill from an empty sequence until the first generated token. */
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  /** Greedy one-token forward passes right after the prefill (each attends over the whole context). */
  decodeMsPerToken: number;
  /** The sequence's state (KV of its tokens) written with llama_state_seq_save_file. */
  stateTokens: number;
  stateBytes: number;
  saveMs: number;
  /** Restore into the cleared sequence after `sync; echo 3 > drop_caches`, then one more token. */
  restoreLoadMs: number;
  restoreForwardMs: number;
  restoreTtftMs: number;
  restoreMBps: number;
  pageCacheDropped: boolean;
}

/** The same token ids kvpark's prefill-decode.ts feeds, so both sides see identical prompts. */
export function benchTokens(contextTokens: number, vocab: number): number[] {
  return Array.from({ length: contextTokens }, (_, i) => (i * 7919 + 17) % Math.min(vocab, 8000));
}

/** Time of one `it.next()`, with the token it produced. */
async function step(it: AsyncGenerator<number, void, void>): Promise<[number, number]> {
  const t = performance.now();
  const r = await it.next();
  if (r.done) throw new Error("llama.cpp stopped generating");
  return [performance.now() - t, r.value];
}

/**
 * Measures one context length. The context holds exactly the prompt, the decode steps and the
 * restore's extra token; batch size 512 like kvpark's prefill chunk.
 */
export async function measureContext(
  peer: LlamaPeer,
  contextTokens: number,
  decodeTokens: number,
  stateFile: string,
  log: (m: string) => void,
): Promise<PeerContextResult> {
  const context = await peer.model.createContext({
    contextSize: contextTokens + decodeTokens + 8,
    batchSize: 512,
    threads: peer.threads,
    sequences: 1,
  });
  try {
    const seq = context.getSequence();
    const tokens = benchTokens(contextTokens, peer.vocabSize);
    const it = seq.evaluate(tokens, { temperature: 0 });
    const [prefillMs] = await step(it);
    let decodeMs = 0;
    for (let i = 0; i < decodeTokens; i++) decodeMs += (await step(it))[0];
    await it.return();
    log(
      `peer: llama.cpp ${contextTokens} tokens: prefill ${(prefillMs / 1000).toFixed(1)} s, decode ${(decodeMs / decodeTokens).toFixed(0)} ms/token`,
    );

    const stateTokens = seq.nextTokenIndex;
    const saveStarted = performance.now();
    const { fileSize } = await seq.saveStateToFile(stateFile);
    const saveMs = performance.now() - saveStarted;

    await seq.clearHistory();
    const pageCacheDropped = dropPageCache();
    const loadStarted = performance.now();
    await seq.loadStateFromFile(stateFile, { acceptRisk: true });
    const restoreLoadMs = performance.now() - loadStarted;
    if (seq.nextTokenIndex !== stateTokens)
      throw new Error(`restore gave ${seq.nextTokenIndex} tokens, saved ${stateTokens}`);
    const after = seq.evaluate([tokens[0]], { temperature: 0 });
    const [restoreForwardMs] = await step(after);
    await after.return();
    fs.rmSync(stateFile, { force: true });
    return {
      contextTokens,
      prefillSeconds: prefillMs / 1000,
      prefillTokensPerSecond: contextTokens / (prefillMs / 1000),
      decodeMsPerToken: decodeMs / decodeTokens,
      stateTokens,
      stateBytes: fileSize,
      saveMs,
      restoreLoadMs,
      restoreForwardMs,
      restoreTtftMs: restoreLoadMs + restoreForwardMs,
      restoreMBps: fileSize / 1e6 / (restoreLoadMs / 1000),
      pageCacheDropped,
    };
  } finally {
    await context.dispose();
  }
}

/**
 * Checks that the GGUF loads and generates before long contexts are spent on it: a 1k-token
 * prompt, a few greedy tokens, and the tokenizer agreeing with kvpark's on a plain sentence.
 */
export async function smoke(peer: LlamaPeer, expectTokens: { text: string; ids: number[] }): Promise<string> {
  const ids = peer.model.tokenize(expectTokens.text);
  if (ids.join(",") !== expectTokens.ids.join(","))
    throw new Error(
      `GGUF tokenizer differs from kvpark's on ${JSON.stringify(expectTokens.text)}: ` +
        `[${ids.join(",")}] vs [${expectTokens.ids.join(",")}]`,
    );
  const context = await peer.model.createContext({
    contextSize: 1024 + 16,
    batchSize: 512,
    threads: peer.threads,
  });
  try {
    const seq = context.getSequence();
    const it = seq.evaluate(benchTokens(1024, peer.vocabSize), { temperature: 0 });
    const out: number[] = [];
    for (let i = 0; i < 4; i++) out.push((await step(it))[1]);
    await it.return();
    if (out.some((t) => !Number.isInteger(t) || t < 0))
      throw new Error(`llama.cpp generated bad tokens ${out.join(",")}`);
    return `tokenizer agrees on ${ids.length} tokens; 1k prompt generated [${out.join(", ")}]`;
  } finally {
    await context.dispose();
  }
}
