import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { isCurrentlyGenerated } from "../../src/model-gen/generate";
import { CLI } from "./server";

/** What the benchmark needs to know about a model directory. */
export interface ModelShape {
  dir: string;
  preset: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Size of tokenizer.json's vocabulary (regular and added tokens). */
  tokenizerVocab: number;
  /** Bytes of float32 K and V per token, all layers: what a RAM block holds per token. */
  kvBytesPerToken: number;
  weightBytes: number;
}

/**
 * Generates the preset into `dir` unless a model is already there. With `owned` (the bench's own
 * model directory), a model the generator wrote with an older version of itself is generated again;
 * a directory given by --model is used as it is.
 */
export function ensureModel(preset: string, dir: string, owned: boolean, log: (m: string) => void): void {
  if (fs.existsSync(path.join(dir, "config.json")) && (!owned || isCurrentlyGenerated(dir, preset))) return;
  fs.rmSync(dir, { recursive: true, force: true });
  log(`generating the ${preset} model in ${dir}`);
  const r = spawnSync(process.execPath, [CLI, "model", "generate", preset, "--out", dir], {
    encoding: "utf8",
  });
  if (r.status !== 0) throw new Error(`model generate ${preset} failed: ${r.stderr}`);
}

export function readModel(preset: string, dir: string): ModelShape {
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<string, number>;
  const tokenizer = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as {
    model: { vocab: Record<string, number> };
    added_tokens?: Array<{ id: number }>;
  };
  const ids = [...Object.values(tokenizer.model.vocab), ...(tokenizer.added_tokens ?? []).map((t) => t.id)];
  const layers = config.num_hidden_layers;
  const kvHeads = config.num_key_value_heads ?? config.num_attention_heads;
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  const weightBytes = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".safetensors"))
    .reduce((sum, f) => sum + fs.statSync(path.join(dir, f)).size, 0);
  return {
    dir,
    preset,
    layers,
    kvHeads,
    headDim,
    tokenizerVocab: Math.max(...ids) + 1,
    kvBytesPerToken: layers * 2 * kvHeads * headDim * 4,
    weightBytes,
  };
}
