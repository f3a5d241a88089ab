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
  /** Bytes of float32 K and V per token over the layers that hold them (not the recurrent ones). */
  kvBytesPerToken: number;
  /**
   * Bytes of one recurrent snapshot over all recurrent layers (qwen3_5's Gated DeltaNet): every
   * block holds one besides its KV. 0 without recurrent layers.
   */
  snapshotBytes: number;
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
  const raw = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  const config = raw as Record<string, number>;
  const tokenizer = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")) as {
    model: { vocab: Record<string, number> };
    added_tokens?: Array<{ id: number }>;
  };
  const ids = [...Object.values(tokenizer.model.vocab), ...(tokenizer.added_tokens ?? []).map((t) => t.id)];
  const layers = config.num_hidden_layers;
  const kvHeads = config.num_key_value_heads ?? config.num_attention_heads;
  const headDim = config.head_dim ?? config.hidden_size / config.num_attention_heads;
  // qwen3_5: Gated DeltaNet layers, every full_attention_interval-th layer attends (unless listed).
  const layerTypes = raw.layer_types as string[] | undefined;
  const recurrent =
    raw.model_type !== "qwen3_5"
      ? 0
      : (layerTypes?.filter((t) => t === "linear_attention").length ??
        layers - Math.floor(layers / (config.full_attention_interval ?? 4)));
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
    kvBytesPerToken: (layers - recurrent) * 2 * kvHeads * headDim * 4,
    snapshotBytes: recurrent * snapshotBytesOf(raw),
    weightBytes,
  };
}

/** Bytes of one Gated DeltaNet layer's state: conv rows [kernel - 1, channels] and S [Hv, Dv, Dk]. */
function snapshotBytesOf(c: Record<string, unknown>): number {
  const n = (k: string, d: number) => (typeof c[k] === "number" ? (c[k] as number) : d);
  const hk = n("linear_num_key_heads", 16);
  const hv = n("linear_num_value_heads", 32);
  const dk = n("linear_key_head_dim", 128);
  const dv = n("linear_value_head_dim", 128);
  const kernel = n("linear_conv_kernel_dim", 4);
  return ((kernel - 1) * (2 * hk * dk + hv * dv) + hv * dv * dk) * 4;
}
