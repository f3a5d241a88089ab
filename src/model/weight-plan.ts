import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelConfig } from "./config";
import { ModelError } from "./errors";
import type { CausalLM } from "./models";
import { SafetensorsError, type TensorInfo, readSafetensorsHeader } from "../util/safetensors";

/**
 * A model directory's weight files and the plan that fills each parameter from them, checked
 * against config.json before MLX reads a tensor.
 */

/** One weight file with the tensors its safetensors header lists. */
export interface WeightFile {
  name: string;
  path: string;
  bytes: number;
  tensors: Map<string, TensorInfo>;
}

/** Finds the weight files: the shards an index names, or the single model.safetensors. */
export function listWeightFiles(dir: string): WeightFile[] {
  const indexFile = path.join(dir, "model.safetensors.index.json");
  let names: string[];
  let weightMap: Record<string, string> | null = null;
  if (fs.existsSync(indexFile)) {
    let index: { weight_map?: unknown };
    try {
      index = JSON.parse(fs.readFileSync(indexFile, "utf8"));
    } catch (err) {
      throw new ModelError(
        "MODEL_INVALID",
        `model.safetensors.index.json is not valid JSON: ${(err as Error).message}`,
      );
    }
    if (typeof index.weight_map !== "object" || index.weight_map === null) {
      throw new ModelError("MODEL_INVALID", 'model.safetensors.index.json has no "weight_map" object');
    }
    weightMap = index.weight_map as Record<string, string>;
    names = [...new Set(Object.values(weightMap))].sort();
    for (const name of names) {
      if (typeof name !== "string" || name.includes("/") || name.includes("\\") || name.startsWith(".")) {
        throw new ModelError(
          "MODEL_INVALID",
          `model.safetensors.index.json names an invalid shard ${JSON.stringify(name)}`,
        );
      }
      if (!fs.existsSync(path.join(dir, name))) {
        throw new ModelError(
          "MODEL_FILE_MISSING",
          `weight shard ${name} listed in model.safetensors.index.json is missing from ${dir}; download every shard`,
        );
      }
    }
  } else if (fs.existsSync(path.join(dir, "model.safetensors"))) {
    names = ["model.safetensors"];
  } else {
    throw new ModelError(
      "MODEL_FILE_MISSING",
      `no weights in ${dir}: expected model.safetensors, or shards with model.safetensors.index.json`,
    );
  }
  const files = names.map((name) => {
    const file = path.join(dir, name);
    return { name, path: file, bytes: fs.statSync(file).size, tensors: readWeightHeader(file, name) };
  });
  if (weightMap) {
    for (const [tensorName, fileName] of Object.entries(weightMap)) {
      if (!files.find((f) => f.name === fileName)!.tensors.has(tensorName)) {
        throw new ModelError(
          "MODEL_INVALID",
          `model.safetensors.index.json places ${tensorName} in ${fileName}, which does not contain it`,
        );
      }
    }
  }
  return files;
}

/** A weight file's tensors; a damaged header is MODEL_INVALID, refused before MLX reads the file. */
function readWeightHeader(file: string, name: string): Map<string, TensorInfo> {
  try {
    return readSafetensorsHeader(file);
  } catch (err) {
    if (!(err instanceof SafetensorsError)) throw err;
    throw new ModelError("MODEL_INVALID", `${name}: ${err.message}; the file is damaged or not safetensors`);
  }
}

/** How one parameter is filled: a tensor converted to float32, or a quantized layer dequantized. */
export type LoadStep =
  | { kind: "plain"; parameter: string; name: string; file: WeightFile; fileBytes: number }
  | {
      kind: "quantized";
      parameter: string;
      parts: { name: string; file: WeightFile }[];
      groupSize: number;
      bits: number;
      fileBytes: number;
    };

/** Tensors a checkpoint may carry that the model does not use. */
const IGNORED_TENSOR = /(^|\.)rotary_emb\.inv_freq$/;

/**
 * Matches the checkpoint's tensors to the model's parameters and checks names, dtypes and shapes,
 * so that loading itself cannot fail inside MLX.
 */
export function planWeights(model: CausalLM, config: ModelConfig, files: WeightFile[]): LoadStep[] {
  const where = new Map<string, WeightFile>();
  for (const file of files) {
    for (const name of file.tensors.keys()) {
      const previous = where.get(name);
      if (previous) {
        throw new ModelError(
          "MODEL_INVALID",
          `tensor ${name} appears in both ${previous.name} and ${file.name}`,
        );
      }
      where.set(name, file);
    }
  }
  const info = (name: string): TensorInfo => where.get(name)!.tensors.get(name)!;
  const bytesOf = (name: string): number => {
    const t = info(name);
    return t.end - t.begin;
  };
  const used = new Set<string>();
  const steps: LoadStep[] = [];
  const fmt = (shape: number[]) => `[${shape.join(", ")}]`;

  for (const [parameter, placeholder] of model.namedParameters()) {
    const expected = placeholder.shape;
    const file = where.get(parameter);
    if (!file) {
      throw new ModelError(
        "MODEL_INVALID",
        `tensor ${parameter} is missing from the weights (${files.map((f) => f.name).join(", ")}); does config.json belong to these weights?`,
      );
    }
    const module = parameter.endsWith(".weight") ? parameter.slice(0, -".weight".length) : null;
    if (module !== null && where.has(`${module}.scales`)) {
      steps.push(planQuantized(parameter, module, expected, config, where, info, bytesOf));
      used.add(parameter).add(`${module}.scales`).add(`${module}.biases`);
      continue;
    }
    const t = info(parameter);
    if (!["F32", "F16", "BF16"].includes(t.dtype)) {
      throw new ModelError(
        "MODEL_INVALID",
        `tensor ${parameter} in ${file.name} has dtype ${t.dtype}; expected F32, F16 or BF16 (or MLX quantization with .scales and .biases)`,
      );
    }
    if (fmt(t.shape) !== fmt(expected)) {
      throw new ModelError(
        "MODEL_INVALID",
        `tensor ${parameter} in ${file.name}: expected shape ${fmt(expected)} from config.json, got ${fmt(t.shape)}`,
      );
    }
    steps.push({ kind: "plain", parameter, name: parameter, file, fileBytes: bytesOf(parameter) });
    used.add(parameter);
  }

  for (const name of where.keys()) {
    if (used.has(name) || IGNORED_TENSOR.test(name)) continue;
    // Some tied checkpoints still ship a copy of the output projection.
    if (config.tieWordEmbeddings && name.startsWith("lm_head.")) continue;
    throw new ModelError(
      "MODEL_INVALID",
      `tensor ${name} in ${where.get(name)!.name} is not a parameter of a ${config.modelType} model with this config.json`,
    );
  }
  return steps;
}

function planQuantized(
  parameter: string,
  module: string,
  expected: number[],
  config: ModelConfig,
  where: Map<string, WeightFile>,
  info: (name: string) => TensorInfo,
  bytesOf: (name: string) => number,
): LoadStep {
  const q = config.quantization;
  if (!q) {
    throw new ModelError(
      "MODEL_INVALID",
      `tensor ${module}.scales marks ${module} as quantized, but config.json has no "quantization" entry`,
    );
  }
  const { groupSize, bits } = q.perLayer[module] ?? q;
  const names = [parameter, `${module}.scales`, `${module}.biases`];
  for (const name of names) {
    if (!where.has(name))
      throw new ModelError("MODEL_INVALID", `quantized layer ${module} has no tensor ${name}`);
  }
  const [w, s, b] = names.map(info);
  const [rows, cols] = expected;
  const fmt = (shape: number[]) => `[${shape.join(", ")}]`;
  const check = (name: string, t: TensorInfo, dtypes: string[], shape: number[]) => {
    if (!dtypes.includes(t.dtype) || fmt(t.shape) !== fmt(shape)) {
      throw new ModelError(
        "MODEL_INVALID",
        `tensor ${name}: expected ${dtypes.join(" or ")} ${fmt(shape)} for a ${bits}-bit, group-${groupSize} quantization of ${fmt(expected)} (config.json), got ${t.dtype} ${fmt(t.shape)}`,
      );
    }
  };
  if (expected.length !== 2 || cols % groupSize !== 0 || (cols * bits) % 32 !== 0) {
    throw new ModelError(
      "MODEL_INVALID",
      `${module} is quantized but its shape ${fmt(expected)} does not split into groups of ${groupSize}`,
    );
  }
  check(parameter, w, ["U32"], [rows, (cols * bits) / 32]);
  check(`${module}.scales`, s, ["F32", "F16", "BF16"], [rows, cols / groupSize]);
  check(`${module}.biases`, b, ["F32", "F16", "BF16"], [rows, cols / groupSize]);
  return {
    kind: "quantized",
    parameter,
    parts: names.map((name) => ({ name, file: where.get(name)! })),
    groupSize,
    bits,
    fileBytes: names.reduce((sum, name) => sum + bytesOf(name), 0),
  };
}
