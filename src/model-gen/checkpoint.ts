import * as fs from "node:fs";
import * as path from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { core as mx } from "@frost-beta/mlx";
import { parseModelConfig } from "../model/config";
import { ModelError } from "../model/errors";
import { ARCHITECTURES, SUPPORTED_MODEL_TYPES } from "../model/models";
import { PRESETS } from "./presets";
import { writeTokenizerFiles } from "./tokenizer-gen";

/** Options of {@link writeRandomCheckpoint}. */
export interface CheckpointOptions {
  /** A name in PRESETS; `config` fields override the preset's. */
  preset?: string;
  /** config.json fields in Hugging Face spelling; complete when no preset is given. */
  config?: Record<string, unknown>;
  /** Regular tokens of the generated tokenizer; default: the preset's, else 512. */
  tokenizerVocabSize?: number;
  /** Seed of every weight; the same options always produce the same bytes. Default 0. */
  seed?: number;
  /**
   * Storage dtype of the weights. Default float32: the engine computes in float32, so a float32
   * file loads with no conversion (Qwen2.5-0.5B: about 2 GB, read at page-cache speed), while
   * bfloat16 halves the file but costs a cast of every weight at load.
   */
  dtype?: "float32" | "bfloat16";
  /** Pack every linear and embedding weight as MLX affine quantization with this many bits. */
  quantizeBits?: 4 | 8;
  /** Quantization group size along the input dimension. Default 64. */
  groupSize?: number;
  /** Split the weights over this many files plus model.safetensors.index.json. Default 1. */
  shards?: number;
}

/** What {@link writeRandomCheckpoint} wrote. */
export interface CheckpointInfo {
  dir: string;
  /** The config.json written. */
  config: Record<string, unknown>;
  /** Weight file names, relative to dir. */
  weightFiles: string[];
  /** Bytes of all weight files. */
  weightBytes: number;
}

/** Standard deviation of generated linear and embedding weights and of biases. */
export const INIT_STD = 0.02;
/**
 * Standard deviation of generated norm weights around their identity value: not exactly identity,
 * so tests see them applied.
 */
export const NORM_INIT_STD = 0.1;

/**
 * The norm weight that leaves a normalised input unchanged: 1, or 0 where the architecture scales
 * by (1 + weight) as Gemma does (its checkpoints store weights near 0).
 */
function identityNormWeight(modelType: string): number {
  return modelType === "gemma3_text" ? 0 : 1;
}

/**
 * Writes a random-weight model in the Hugging Face / mlx-community layout: config.json,
 * generation_config.json, model.safetensors (or shards with model.safetensors.index.json),
 * tokenizer.json and tokenizer_config.json. Tensor names and shapes come from the architecture
 * code itself, so every checkpoint this writes is one the loader must accept.
 */
export async function writeRandomCheckpoint(
  dir: string,
  opts: CheckpointOptions = {},
): Promise<CheckpointInfo> {
  const preset = opts.preset === undefined ? undefined : PRESETS[opts.preset];
  if (opts.preset !== undefined && !preset) {
    throw new RangeError(`unknown preset "${opts.preset}"; choose one of ${Object.keys(PRESETS).join(", ")}`);
  }
  const seed = opts.seed ?? 0;
  const dtype = opts.dtype ?? "float32";
  const groupSize = opts.groupSize ?? 64;
  const shards = opts.shards ?? 1;
  if (!Number.isInteger(shards) || shards < 1)
    throw new RangeError(`shards must be a positive integer, got ${shards}`);

  fs.mkdirSync(dir, { recursive: true });
  const tokenizer = writeTokenizerFiles(dir, {
    vocabSize: opts.tokenizerVocabSize ?? preset?.tokenizerVocabSize ?? 512,
    modelMaxLength: (opts.config?.max_position_embeddings ?? preset?.config.max_position_embeddings) as
      number | undefined,
  });
  const { endOfText, imEnd } = tokenizer.specialTokens;

  const configJson: Record<string, unknown> = {
    ...preset?.config,
    vocab_size: preset?.vocabSize ?? tokenizer.totalVocabSize,
    ...opts.config,
    bos_token_id: endOfText,
    eos_token_id: imEnd,
    torch_dtype: dtype,
  };
  if (opts.quantizeBits !== undefined) {
    // mlx-lm writes both spellings; older readers look for the first, newer ones for the second.
    configJson.quantization = { group_size: groupSize, bits: opts.quantizeBits };
    configJson.quantization_config = { group_size: groupSize, bits: opts.quantizeBits };
  }
  const config = parseModelConfig(configJson, "generated config.json");
  if (config.vocabSize < tokenizer.totalVocabSize) {
    throw new RangeError(
      `vocab_size ${config.vocabSize} is smaller than the tokenizer's ${tokenizer.totalVocabSize} tokens`,
    );
  }
  const create = ARCHITECTURES[config.modelType];
  if (!create) {
    throw new ModelError(
      "MODEL_UNSUPPORTED",
      `model_type "${config.modelType}" is not supported; supported: ${SUPPORTED_MODEL_TYPES.join(", ")}`,
    );
  }
  const parameters = create(config).namedParameters();

  // Assign whole tensors to shards in order, starting a new shard once one holds its share.
  const storedBytes = (shape: number[]): number => {
    const elements = shape.reduce((a, b) => a * b, 1);
    if (opts.quantizeBits !== undefined && isQuantizable(shape, groupSize)) {
      return (elements * opts.quantizeBits) / 8 + (2 * elements * (dtype === "float32" ? 4 : 2)) / groupSize;
    }
    return elements * (dtype === "float32" ? 4 : 2);
  };
  const totalBytes = parameters.reduce((sum, [, p]) => sum + storedBytes(p.shape), 0);
  const shardOf: number[] = [];
  let shard = 0;
  let shardBytes = 0;
  for (const [, p] of parameters) {
    if (shardBytes >= totalBytes / shards && shard < shards - 1) {
      shard += 1;
      shardBytes = 0;
    }
    shardOf.push(shard);
    shardBytes += storedBytes(p.shape);
  }
  const fileNames =
    shards === 1
      ? ["model.safetensors"]
      : Array.from({ length: shards }, (_, i) => {
          const n = (k: number) => String(k).padStart(5, "0");
          return `model-${n(i + 1)}-of-${n(shards)}.safetensors`;
        });

  const storage = dtype === "float32" ? mx.float32 : mx.bfloat16;
  const generators = new TensorGenerators(
    storage,
    opts.quantizeBits ?? null,
    groupSize,
    identityNormWeight(config.modelType),
  );
  const weightMap: Record<string, string> = {};
  let weightBytes = 0;
  for (let s = 0; s < shards; s++) {
    const tensors: Record<string, mx.array> = {};
    parameters.forEach(([name, p], i) => {
      if (shardOf[i] !== s) return;
      const stored = generators.generate(name, p.shape, seed);
      if (stored.length === 3) {
        const module = name.slice(0, -".weight".length);
        [tensors[`${module}.weight`], tensors[`${module}.scales`], tensors[`${module}.biases`]] = stored;
      } else {
        tensors[name] = stored[0];
      }
    });
    for (const name of Object.keys(tensors)) weightMap[name] = fileNames[s];
    const file = path.join(dir, fileNames[s]);
    mx.saveSafetensors(file, tensors, { format: "mlx" });
    weightBytes += fs.statSync(file).size;
    await yieldToEventLoop();
  }
  if (shards > 1) {
    const sortedMap = Object.fromEntries(
      Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    );
    writeJson(path.join(dir, "model.safetensors.index.json"), {
      metadata: { total_size: weightBytes },
      weight_map: sortedMap,
    });
  }
  writeJson(path.join(dir, "config.json"), configJson);
  writeJson(path.join(dir, "generation_config.json"), {
    bos_token_id: endOfText,
    eos_token_id: [imEnd, endOfText],
    pad_token_id: endOfText,
    do_sample: true,
    temperature: 0.7,
    top_p: 0.8,
    top_k: 20,
  });
  return { dir, config: configJson, weightFiles: fileNames, weightBytes };
}

/** Linear and embedding weights are packed when their input dimension splits into groups. */
function isQuantizable(shape: number[], groupSize: number): boolean {
  return shape.length === 2 && shape[1] % groupSize === 0;
}

/**
 * Seeded tensors as stored: [weight] or, for a quantized layer, [packed, scales, biases]. Norm
 * weights are centred on their identity value (see identityNormWeight), everything else on 0, with std NORM_INIT_STD and INIT_STD. Uniform
 * rather than normal because this MLX build draws normals about 5x slower, which decided how long
 * generating the 0.5B preset takes; the spread is what matters, not the distribution's shape.
 * Each tensor's key comes from the seed and its name alone, so tensors do not depend on each other.
 *
 * Generation runs through mx.compile, one compiled function per tensor shape: intermediates of a
 * compiled call are never wrapped in JS objects, so they are freed as soon as MLX is done with
 * them instead of waiting for a garbage collection (quantizing Qwen2.5-0.5B without it peaked
 * at 14 GB).
 */
class TensorGenerators {
  private readonly compiled = new Map<string, (key: mx.array) => mx.array[]>();

  constructor(
    private readonly storage: mx.Dtype,
    private readonly quantizeBits: number | null,
    private readonly groupSize: number,
    private readonly normCentre: number,
  ) {}

  generate(name: string, shape: number[], seed: number): mx.array[] {
    const isNorm = /norm\.weight$/.test(name);
    const quantize = this.quantizeBits !== null && isQuantizable(shape, this.groupSize);
    const signature = JSON.stringify([shape, isNorm, quantize]);
    let generate = this.compiled.get(signature);
    if (!generate) {
      // U(-a, a) has std a / sqrt(3).
      const halfWidth = (isNorm ? NORM_INIT_STD : INIT_STD) * Math.sqrt(3);
      const centre = isNorm ? this.normCentre : 0;
      generate = mx.compile((key: mx.array): mx.array[] => {
        const value = mx.random.uniform(centre - halfWidth, centre + halfWidth, shape, mx.float32, key);
        if (!quantize) return [value];
        const q = quantizeAffine(value, this.groupSize, this.quantizeBits!);
        return [q.packed, q.scales, q.biases];
      });
      this.compiled.set(signature, generate);
    }
    // The cast to the storage dtype stays outside the compiled function: MLX's CPU compiler
    // generates C++ that fails to build for bfloat16, and that failure aborts the process.
    const [first, ...rest] = generate(mx.random.key(fnv1a32(`${seed}:${name}`)));
    const stored = [
      rest.length ? first : first.astype(this.storage),
      ...rest.map((a) => a.astype(this.storage)),
    ];
    mx.eval(...stored);
    return stored;
  }
}

function fnv1a32(text: string): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(text, "utf8")) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash;
}

/** An MLX affine-quantized weight: w ≈ scales * q + biases per group of the input dimension. */
export interface QuantizedWeight {
  /** uint32 [out, in * bits / 32]; element j of a word sits in bits [j*bits, (j+1)*bits). */
  packed: mx.array;
  /** float32 [out, in / groupSize]. */
  scales: mx.array;
  /** float32 [out, in / groupSize]. */
  biases: mx.array;
}

/**
 * Quantizes w [out, in] the way mx.dequantize reads it back. Written out rather than calling
 * mx.quantize because this MLX build's quantize refuses inputs narrower than 256 (4-bit) or 128
 * (8-bit) columns, which rules out the tiny test models; mx.dequantize has no such limit.
 */
export function quantizeAffine(w: mx.array, groupSize: number, bits: number): QuantizedWeight {
  const [rows, cols] = w.shape;
  const groups = w.astype(mx.float32).reshape(rows, cols / groupSize, groupSize);
  const low = mx.min(groups, -1, true);
  const levels = 2 ** bits - 1;
  // A constant group would give a zero scale; any positive scale then reproduces it exactly.
  const scales = mx.maximum(mx.divide(mx.subtract(mx.max(groups, -1, true), low), levels), 1e-8);
  const q = mx.clip(mx.round(mx.divide(mx.subtract(groups, low), scales)), 0, levels).astype(mx.uint32);
  const perWord = 32 / bits;
  const shifts = mx.arange(0, 32, bits, mx.uint32);
  // Fields do not overlap, so summing the shifted values is the same as OR-ing them.
  const packed = mx.sum(mx.leftShift(q.reshape(rows, cols / perWord, perWord), shifts), -1);
  return {
    packed,
    scales: scales.reshape(rows, cols / groupSize),
    biases: low.reshape(rows, cols / groupSize),
  };
}

function writeJson(file: string, value: unknown): void {
  fs.writeFileSync(file, JSON.stringify(value, null, 2) + "\n");
}
