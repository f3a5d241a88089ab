// llama.cpp as a peer, side by side with kvpark's forward pass in one run, and the memory-bandwidth
// floor of a one-token forward for both. Optional (`--sections peer`): it needs node-llama-cpp
// (installed on first use into the user's cache directory) and writes a ~1 GB GGUF.
//
// For each context length, back to back: kvpark's in-process prefill/decode (bench/model/
// prefill-decode.ts in a child process, the `engine` section's measurement), then llama.cpp on a
// random-weight GGUF of the same shape and vocabulary (bench/peer/gguf.ts) with the same token ids:
// cold prefill, decode steps, state save, and restore with the page cache dropped. The bandwidth
// (bench/peer/bandwidth.ts) is measured once, in the same run, before the models load.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { type BandwidthResult } from "../peer/bandwidth";
import { writeQwen2Gguf, type GgufModel } from "../peer/gguf";
import { loadPeer, measureContext, smoke, type PeerContextResult } from "../peer/llama";
import { CONFIG_DEFAULTS } from "../../src/config";
import { engineEnv } from "../lib/machine";
import type { Progress } from "../lib/util";

/** kvpark's figures for one context length (prefill-decode.ts's JSON). */
interface KvparkContextResult {
  contextTokens: number;
  prefillSeconds: number;
  prefillTokensPerSecond: number;
  decodeMsPerToken: number;
  decodeBuildMs: number;
  decodeEvalMs: number;
  decodeSampleMs: number;
  weightProductsMs: number;
}

/** Bytes one one-token forward must read at a context length, and the time that takes at best. */
export interface Floor {
  contextTokens: number;
  kvparkWeightBytes: number;
  kvparkKvBytes: number;
  /** At MLX's best matrix-vector bandwidth (how kvpark reads weights). */
  kvparkFloorMs: number;
  /** At the plain-read (memcmp) bandwidth: what the memory delivers to a simple streaming read. */
  kvparkPlainFloorMs: number;
  llamaWeightBytes: number;
  llamaKvBytes: number;
  llamaFloorMs: number;
  llamaPlainFloorMs: number;
}

export interface PeerResult {
  preset: string;
  contexts: number[];
  decodeTokens: number;
  gguf: Omit<GgufModel, "file">;
  llamaBuild: string;
  llamaLoadSeconds: number;
  smoke: string;
  bandwidth: BandwidthResult;
  kvpark: KvparkContextResult[];
  llama: PeerContextResult[];
  /** The server's cold prefill in the same run's ttft section (empty without it). */
  serverPrefill: { contextTokens: number; tokensPerSecond: number }[];
  floors: Floor[];
  markdown: string;
}

interface Shape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
}

function readShape(modelDir: string): Shape {
  const c = JSON.parse(fs.readFileSync(path.join(modelDir, "config.json"), "utf8")) as Record<string, number>;
  return {
    hidden: c.hidden_size,
    layers: c.num_hidden_layers,
    heads: c.num_attention_heads,
    kvHeads: c.num_key_value_heads,
    ffn: c.intermediate_size,
    vocab: c.vocab_size,
  };
}

/**
 * Bytes a one-token forward reads: every matrix once (the tied embedding as the output
 * projection: all of it; the lookup's one row is noise), 1-D tensors (norms, biases) in float32,
 * and the keys and values of every cached token in every layer.
 */
export function forwardBytes(
  s: Shape,
  contextTokens: number,
  matrixBytesPerElement: number,
  kvBytesPerElement: number,
): { weightBytes: number; kvBytes: number } {
  const kvDim = (s.hidden / s.heads) * s.kvHeads;
  const matrices =
    s.vocab * s.hidden + s.layers * (2 * s.hidden * s.hidden + 2 * s.hidden * kvDim + 3 * s.hidden * s.ffn);
  const vectors = s.layers * (2 * s.hidden + s.hidden + 2 * kvDim) + s.hidden;
  return {
    weightBytes: matrices * matrixBytesPerElement + vectors * 4,
    kvBytes: s.layers * 2 * kvDim * contextTokens * kvBytesPerElement,
  };
}

function runChild(script: string, args: string[], what: string): void {
  const r = spawnSync(process.execPath, ["--expose-gc", path.join(__dirname, "..", script), ...args], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
    env: engineEnv(),
  });
  if (r.status !== 0) throw new Error(`${what} failed (exit ${r.status})`);
}

const fixed = (v: number, digits = 0) => (Number.isFinite(v) ? v.toFixed(digits) : "n/a");
const mb = (bytes: number) => fixed(bytes / 1e6, 0);

function renderMarkdown(r: Omit<PeerResult, "markdown">): string {
  const bw = r.bandwidth;
  const gbps = (v: number) => fixed(v / 1e9, 1);
  const out: string[] = [];
  out.push(
    `kvpark (MLX, float32 weights and KV, bench/model/prefill-decode.ts in chunks of the server's ${CONFIG_DEFAULTS.prefillChunkTokens} tokens, ` +
      `and the server's own cold prefill when the ttft section ran) against llama.cpp (${r.llamaBuild}; ` +
      `CPU, F16 weights, F16 KV, batch 512) on a random-weight GGUF of the ${r.preset} shape and vocabulary ` +
      `(${(r.gguf.fileBytes / 1e6).toFixed(0)} MB, ${r.gguf.tokenizerTokens} tokens padded to ${r.gguf.vocabSize}; ` +
      `written in ${r.gguf.writeSeconds.toFixed(1)} s, loaded in ${r.llamaLoadSeconds.toFixed(1)} s). Same token ids on both sides; ` +
      `per context length kvpark ran first, then llama.cpp; ${r.decodeTokens} greedy decode steps after each cold prefill. ` +
      `Smoke test at 1k context: ${r.smoke}.`,
    "",
    "| context | prefill tok/s kvpark | llama.cpp | kvpark / llama.cpp | kvpark server, cold (ttft section) | server / llama.cpp | decode ms/token kvpark | llama.cpp | kvpark / llama.cpp |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const k of r.kvpark) {
    const l = r.llama.find((x) => x.contextTokens === k.contextTokens);
    if (!l) continue;
    const server = r.serverPrefill.find((x) => x.contextTokens === k.contextTokens)?.tokensPerSecond ?? NaN;
    out.push(
      `| ${k.contextTokens} | ${fixed(k.prefillTokensPerSecond, 1)} | ${fixed(l.prefillTokensPerSecond, 1)} | ` +
        `${fixed(k.prefillTokensPerSecond / l.prefillTokensPerSecond, 2)}x | ${fixed(server, 1)} | ` +
        `${fixed(server / l.prefillTokensPerSecond, 2)}x | ${fixed(k.decodeMsPerToken)} | ` +
        `${fixed(l.decodeMsPerToken)} | ${fixed(k.decodeMsPerToken / l.decodeMsPerToken, 2)}x |`,
    );
  }
  out.push(
    "",
    `llama.cpp's state save and restore (llama_state_seq_save_file / load_file into the cleared sequence, page cache ` +
      `${r.llama.every((l) => l.pageCacheDropped) ? "dropped" : "WARM (not root)"} before the load), then one token; ` +
      `kvpark's restore is in the TTFT section:`,
    "",
    "| context | state tokens | state MB | save ms | restore: load ms | + one-token forward ms | = TTFT ms | load MB/s |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const l of r.llama)
    out.push(
      `| ${l.contextTokens} | ${l.stateTokens} | ${mb(l.stateBytes)} | ${fixed(l.saveMs)} | ${fixed(l.restoreLoadMs)} | ` +
        `${fixed(l.restoreForwardMs)} | ${fixed(l.restoreTtftMs)} | ${fixed(l.restoreMBps)} |`,
    );
  out.push(
    "",
    `Floors: memory read bandwidth in this run (best of ${bw.runs}, ${(bw.bytes / 2 ** 30).toFixed(2)} GiB): ` +
      `MLX float32 matrix-vector products (how weights are read): one square matrix ${gbps(bw.gemvBytesPerSecond)} GB/s, ` +
      `${(bw.layerGemvBytes / 1e6).toFixed(0)} MB of [4864, 896] matrices in one graph ${gbps(bw.layerGemvBytesPerSecond)} GB/s; ` +
      `MLX sum ${gbps(bw.sumBytesPerSecond)} GB/s, memcmp ${gbps(bw.memcmpBytesPerSecond)} GB/s. ` +
      `A one-token forward reads every weight matrix once (the tied embedding in full, as the output projection) ` +
      `and the KV of every cached token; floor = those bytes / the better matrix-vector bandwidth, and in brackets / the memcmp bandwidth.`,
    "",
    "| context | kvpark bytes read (weights + KV) | floor ms | measured decode ms | measured / floor | llama.cpp bytes read | floor ms | measured decode ms | measured / floor |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const f of r.floors) {
    const k = r.kvpark.find((x) => x.contextTokens === f.contextTokens);
    const l = r.llama.find((x) => x.contextTokens === f.contextTokens);
    const kd = k?.decodeMsPerToken ?? Number.NaN;
    const ld = l?.decodeMsPerToken ?? Number.NaN;
    out.push(
      `| ${f.contextTokens} | ${mb(f.kvparkWeightBytes)} + ${mb(f.kvparkKvBytes)} MB | ${fixed(f.kvparkFloorMs)} (${fixed(f.kvparkPlainFloorMs)}) | ${fixed(kd)} | ` +
        `${fixed(kd / f.kvparkFloorMs, 2)}x | ${mb(f.llamaWeightBytes)} + ${mb(f.llamaKvBytes)} MB | ${fixed(f.llamaFloorMs)} (${fixed(f.llamaPlainFloorMs)}) | ` +
        `${fixed(ld)} | ${fixed(ld / f.llamaFloorMs, 2)}x |`,
    );
  }
  out.push(
    "",
    "Where kvpark's decode step goes (medians per step, `prefill-decode.ts`): building the lazy graph in JS, " +
      "evaluating it, sampling (argmax, the id back in JS); and every weight matrix times one row in one graph " +
      "(the weight reads alone, as fast as this MLX build does them). Evaluation minus the weight reads is " +
      "attention over the cache, norms, rope and residual adds.",
    "",
    "| context | decode ms | graph build ms | evaluation ms | sampling ms | weight products alone ms | evaluation - weight products ms |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const k of r.kvpark)
    out.push(
      `| ${k.contextTokens} | ${fixed(k.decodeMsPerToken)} | ${k.decodeBuildMs.toFixed(1)} | ${fixed(k.decodeEvalMs)} | ` +
        `${k.decodeSampleMs.toFixed(1)} | ${fixed(k.weightProductsMs)} | ${fixed(k.decodeEvalMs - k.weightProductsMs)} |`,
    );
  return out.join("\n");
}

/** Runs the peer section (see the file comment). */
export async function runPeer(opts: {
  modelDir: string;
  preset: string;
  contexts: number[];
  decodeTokens: number;
  /** The server's cold prefill tok/s per context length, when the ttft section ran in the same run. */
  serverPrefill?: Map<number, number>;
  workDir: string;
  progress: Progress;
}): Promise<PeerResult> {
  const { modelDir, preset, contexts, decodeTokens, progress } = opts;
  const dir = path.join(opts.workDir, "peer");
  fs.mkdirSync(dir, { recursive: true });
  const shape = readShape(modelDir);

  progress.log("peer: memory bandwidth (MLX gemv and sum over 1 GiB float32, memcmp)");
  const bwFile = path.join(dir, "bandwidth.json");
  runChild("peer/bandwidth.js", ["--out", bwFile], "bandwidth measurement");
  const bandwidth = JSON.parse(fs.readFileSync(bwFile, "utf8")) as BandwidthResult;

  progress.log(`peer: writing a random-weight GGUF of ${preset}`);
  const gguf = writeQwen2Gguf(modelDir, path.join(dir, `${preset}-f16.gguf`));
  const loadStarted = performance.now();
  const peer = await loadPeer(gguf.file, gguf.vocabSize, (m) => progress.log(m));
  const llamaLoadSeconds = (performance.now() - loadStarted) / 1000;
  const kvpark: KvparkContextResult[] = [];
  const llama: PeerContextResult[] = [];
  let smokeReport: string;
  try {
    const tokenizer = new Tokenizer(
      JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer.json"), "utf8")),
      JSON.parse(fs.readFileSync(path.join(modelDir, "tokenizer_config.json"), "utf8")),
    );
    const text = "The quick brown fox jumps over the lazy dog, twice: déjà vu!";
    smokeReport = await smoke(peer, { text, ids: tokenizer.encode(text, { add_special_tokens: false }).ids });
    progress.log(`peer: GGUF smoke test: ${smokeReport}`);

    for (const L of contexts) {
      progress.log(`peer: kvpark in-process prefill/decode at ${L} tokens`);
      const out = path.join(dir, `kvpark-${L}.json`);
      runChild(
        "model/prefill-decode.js",
        [
          "--preset",
          preset,
          "--dir",
          modelDir,
          "--contexts",
          String(L),
          "--decode-tokens",
          String(decodeTokens),
          // The server's prefill chunk.
          "--chunk-tokens",
          String(CONFIG_DEFAULTS.prefillChunkTokens),
          "--out",
          out,
        ],
        "kvpark prefill-decode",
      );
      kvpark.push(
        ...(JSON.parse(fs.readFileSync(out, "utf8")) as { results: KvparkContextResult[] }).results,
      );
      progress.log(`peer: llama.cpp at ${L} tokens`);
      llama.push(
        await measureContext(peer, L, decodeTokens, path.join(dir, `state-${L}.bin`), (m) => progress.log(m)),
      );
    }
  } finally {
    await peer.dispose();
    fs.rmSync(gguf.file, { force: true });
  }

  const floors: Floor[] = contexts.map((L) => {
    const k = forwardBytes(shape, L, 4, 4);
    const l = forwardBytes(shape, L, 2, 2);
    const gemv = Math.max(bandwidth.gemvBytesPerSecond, bandwidth.layerGemvBytesPerSecond);
    const ms = (bytes: number) => (bytes / gemv) * 1000;
    const plainMs = (bytes: number) => (bytes / bandwidth.memcmpBytesPerSecond) * 1000;
    return {
      contextTokens: L,
      kvparkWeightBytes: k.weightBytes,
      kvparkKvBytes: k.kvBytes,
      kvparkFloorMs: ms(k.weightBytes + k.kvBytes),
      kvparkPlainFloorMs: plainMs(k.weightBytes + k.kvBytes),
      llamaWeightBytes: l.weightBytes,
      llamaKvBytes: l.kvBytes,
      llamaFloorMs: ms(l.weightBytes + l.kvBytes),
      llamaPlainFloorMs: plainMs(l.weightBytes + l.kvBytes),
    };
  });
  const { file: _file, ...ggufInfo } = gguf;
  const result = {
    preset,
    contexts,
    decodeTokens,
    gguf: ggufInfo,
    llamaBuild: peer.buildInfo,
    llamaLoadSeconds,
    smoke: smokeReport,
    bandwidth,
    kvpark,
    llama,
    serverPrefill: [...(opts.serverPrefill ?? new Map<number, number>())].map(
      ([contextTokens, tokensPerSecond]) => ({
        contextTokens,
        tokensPerSecond,
      }),
    ),
    floors,
  };
  return { ...result, markdown: renderMarkdown(result) };
}
