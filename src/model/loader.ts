import * as fs from "node:fs";
import * as path from "node:path";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { core as mx } from "@frost-beta/mlx";
import { type LayerType, type ModelConfig, readModelConfig, tokenIdList } from "./config";
import { ModelError } from "./errors";
import { modelFingerprint } from "./fingerprint";
import { calibrateRows, type RowCalibration } from "./batch-rows";
import { ModelCache } from "./model-cache";
import { ARCHITECTURES, type CausalLM, type LogitsFor, SUPPORTED_MODEL_TYPES } from "./models";
import { SafetensorsError, type TensorInfo, readSafetensorsHeader } from "../util/safetensors";

export { type LayerKV, type LayerBlock, type RecurrentSnapshot, KVCache } from "./kv-cache";
export { ModelCache } from "./model-cache";
export type { LogitsFor } from "./models";

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /**
   * Called with (0, total) first, after each tensor is read and converted, and with
   * (total, total) last; bytes are weight-file bytes.
   */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** JSON file remembering weight-file digests across processes (by path, size and mtime). */
  fingerprintCacheFile?: string;
  /** Longest chunk one forward() call computes at once; longer inputs are split. Default 512. */
  prefillChunkTokens?: number;
}

/** Generation defaults from generation_config.json (and config.json's token ids). */
export interface GenerationDefaults {
  bosTokenId: number | null;
  /** Every end-of-sequence id named by config.json or generation_config.json. */
  eosTokenIds: number[];
  temperature: number | null;
  topP: number | null;
  topK: number | null;
}

/** Options of {@link LoadedModel.forward}. */
export interface ForwardOptions {
  /** "last" (default): logits [1, vocab] for the last token. "all": [T, vocab], one row per token. */
  logits?: LogitsFor;
}

/** Default for LoadOptions.prefillChunkTokens: bounds attention scores to chunk x context. */
export const PREFILL_CHUNK_TOKENS = 512;

/** A model ready to run: weights in float32, config, fingerprint and a forward pass over a cache. */
export class LoadedModel {
  readonly numLayers: number;
  readonly kvHeads: number;
  readonly headDim: number;

  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly model: CausalLM,
    /** Hex SHA-256 over config, weights and tokenizer; see fingerprint.ts. */
    readonly fingerprint: string,
    readonly generation: GenerationDefaults,
    /** Bytes the float32 weights occupy in memory. */
    readonly weightBytes: number,
    readonly prefillChunkTokens: number = PREFILL_CHUNK_TOKENS,
  ) {
    this.numLayers = config.numHiddenLayers;
    this.kvHeads = config.numKeyValueHeads;
    this.headDim = config.headDim;
    this.layerTypes = config.layerTypes;
    this.slidingWindow = config.slidingWindow;
    this.recurrentLayers = config.layerTypes.flatMap((t, i) => (t === "linear_attention" ? [i] : []));
    const linear = config.linearAttention;
    this.recurrentShape =
      linear && this.recurrentLayers.length > 0
        ? {
            conv: [
              linear.convKernel - 1,
              2 * linear.numKeyHeads * linear.keyHeadDim + linear.numValueHeads * linear.valueHeadDim,
            ],
            delta: [linear.numValueHeads, linear.valueHeadDim, linear.keyHeadDim],
          }
        : null;
  }

  /**
   * Per layer, its kind: "full_attention" and "sliding_attention" layers hold keys and values,
   * "linear_attention" layers (qwen3_5's Gated DeltaNet) a recurrent state. The prefix cache
   * reads this to know what a block holds for each layer.
   */
  readonly layerTypes: readonly LayerType[];

  /** Window of the "sliding_attention" layers in tokens; null without them. */
  readonly slidingWindow: number | null;

  /** Layers that carry recurrent state instead of keys and values. */
  readonly recurrentLayers: number[];

  /**
   * Shapes of a recurrent layer's state without the batch dimension: the convolution's carried
   * input rows [kernel - 1, channels] and the delta rule's state [valueHeads, valueHeadDim,
   * keyHeadDim]. Null without recurrent layers.
   */
  readonly recurrentShape: { conv: number[]; delta: number[] } | null;

  get hasRecurrentState(): boolean {
    return this.recurrentLayers.length > 0;
  }

  /**
   * An empty KV cache for one sequence. `reserveTokens` (e.g. prompt + max_tokens) preallocates
   * it so it never has to grow.
   */
  newCache(reserveTokens = 0): ModelCache {
    const cache = new ModelCache(this.numLayers, this.kvHeads, this.headDim, undefined, this.recurrentLayers);
    if (reserveTokens > 0) cache.reserve(reserveTokens);
    return cache;
  }

  /**
   * Runs `tokens` at positions cache.offset .. cache.offset + T - 1 and appends their keys and
   * values to `cache`. Returns float32 logits: [1, vocab] for the last token (default) or
   * [T, vocab] with `logits: "all"`.
   *
   * The result is lazy: the last chunk is computed when the logits are evaluated (the Sampler does
   * that) or when `materialize(cache)` is called. A prefill chunk whose logits are not needed
   * should be followed by materialize(cache) and its logits dropped: that skips the vocabulary
   * projection. Inputs longer than prefillChunkTokens are run in chunks, all but the last
   * evaluated here.
   *
   * Token ids must be integers in [0, vocab_size): the caller validates user input; an id out of
   * range here is a programming error and throws RangeError.
   */
  forward(tokens: number[], cache: ModelCache, opts: ForwardOptions = {}): mx.array {
    const logitsFor = opts.logits ?? "last";
    if (tokens.length === 0) throw new RangeError("forward: no tokens");
    this.check(tokens, cache);
    const rows: mx.array[] = [];
    for (let start = 0; start < tokens.length; start += this.prefillChunkTokens) {
      const chunk = tokens.slice(start, start + this.prefillChunkTokens);
      const isLast = start + chunk.length >= tokens.length;
      const inputs = mx.array([chunk], mx.int32);
      if (logitsFor === "all") {
        const logits = this.model.forward(inputs, [{ rows: chunk.length, cache }], "all");
        if (!isLast) mx.eval(logits);
        rows.push(logits.reshape(chunk.length, -1));
      } else if (isLast) {
        rows.push(this.model.forward(inputs, [{ rows: chunk.length, cache }], "last").reshape(1, -1));
      } else {
        this.model.forward(inputs, [{ rows: chunk.length, cache }], "last");
        this.materialize(cache);
      }
    }
    return rows.length === 1 ? rows[0] : mx.concatenate(rows, 0);
  }

  /**
   * One decode step of several sequences in one pass: `tokens[i]` runs at the next position of
   * `caches[i]`. The projections, MLP and output head run over all rows together, each sequence
   * attends over its own cache. Returns lazy float32 logits [n, vocab], row i for sequence i, the
   * same to the bit as `forward([tokens[i]], caches[i])` once calibrateBatchRows covers n rows.
   */
  decodeBatch(tokens: number[], caches: ModelCache[]): mx.array {
    if (tokens.length === 0 || tokens.length !== caches.length) {
      throw new RangeError(`decodeBatch: ${tokens.length} tokens for ${caches.length} caches`);
    }
    if (new Set(caches).size !== caches.length) throw new RangeError("decodeBatch: a cache appears twice");
    caches.forEach((cache, i) => this.check([tokens[i]], cache));
    const inputs = mx.array([tokens], mx.int32);
    const segments = caches.map((cache) => ({ rows: 1, cache }));
    return this.model.forward(inputs, segments, "last").reshape(tokens.length, -1);
  }

  /**
   * Measures which row counts up to `maxRows` each of the model's products computes alike, and pads
   * every other count to one of those (see batch-rows.ts), so that a decode batch of up to
   * `maxRows` sequences gives each the bits it would get alone. Returns what it measured.
   */
  calibrateBatchRows(maxRows: number): RowCalibration[] {
    return calibrateRows(this.model.rowProducts(), maxRows);
  }

  private check(tokens: number[], cache: ModelCache): void {
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.config.vocabSize) {
        throw new RangeError(`forward: token id ${t} outside the vocabulary [0, ${this.config.vocabSize})`);
      }
    }
    if (
      cache.layers.length !== this.numLayers ||
      cache.layers[0].kvHeads !== this.kvHeads ||
      cache.recurrent.some((r, i) => (r !== null) !== this.recurrentLayers.includes(i))
    ) {
      throw new RangeError("forward: the cache was made for a different model");
    }
  }

  /** Computes the cache's pending writes without computing logits. */
  materialize(cache: ModelCache): void {
    mx.eval(...cache.state());
  }
}

/**
 * Loads a model directory in the Hugging Face / mlx-community layout: config.json,
 * model.safetensors or shards listed in model.safetensors.index.json, tokenizer.json,
 * optional tokenizer_config.json and generation_config.json. Weights are converted to float32
 * (the only dtype this CPU's matmul runs); MLX-quantized layers are dequantized.
 *
 * Errors are ModelError: MODEL_FILE_MISSING for an absent file, MODEL_UNSUPPORTED for an
 * architecture or setting kvpark does not run, MODEL_INVALID for content that contradicts the
 * config or the format. Every check runs before MLX evaluates anything, since an exception
 * inside MLX evaluation aborts the process.
 */
export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new ModelError("MODEL_FILE_MISSING", `model directory ${dir} does not exist`);
  }
  const config = readModelConfig(dir);
  const create = ARCHITECTURES[config.modelType];
  if (!create) {
    throw new ModelError(
      "MODEL_UNSUPPORTED",
      `config.json: model_type "${config.modelType}" is not supported; supported: ${SUPPORTED_MODEL_TYPES.join(", ")}`,
    );
  }
  if (!fs.existsSync(path.join(dir, "tokenizer.json"))) {
    throw new ModelError(
      "MODEL_FILE_MISSING",
      `tokenizer.json not found in ${dir}: copy it from the model's original repository`,
    );
  }
  const generation = readGenerationDefaults(dir, config);
  const files = listWeightFiles(dir);
  const totalBytes = files.reduce((sum, f) => sum + f.bytes, 0);

  // Hash while loading: the hash reads files through the thread pool, loading runs MLX on this
  // thread and yields between tensors.
  const fingerprint = modelFingerprint(
    dir,
    files.map((f) => f.name),
    opts.fingerprintCacheFile,
  );
  fingerprint.catch(() => undefined);

  const model = create(config);
  let loadedBytes = 0;
  let weightBytes = 0;
  opts.onProgress?.(0, totalBytes);
  const plan = planWeights(model, config, files);
  const arrays = new Map<string, Record<string, mx.array>>();
  const tensor = (file: WeightFile, name: string): mx.array => {
    let loaded = arrays.get(file.name);
    if (!loaded) {
      // mx.load reads lazily: nothing is read until a tensor is evaluated.
      loaded = mx.load(file.path) as unknown as Record<string, mx.array>;
      arrays.set(file.name, loaded);
    }
    return loaded[name];
  };
  for (const step of plan) {
    let value: mx.array;
    if (step.kind === "plain") {
      value = tensor(step.file, step.name);
      if (value.dtype !== mx.float32) value = value.astype(mx.float32);
    } else {
      const [w, s, b] = step.parts.map((p) => tensor(p.file, p.name));
      value = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), step.groupSize, step.bits);
    }
    mx.eval(value);
    model.setParameter(step.parameter, value);
    weightBytes += value.size * 4;
    loadedBytes += step.fileBytes;
    opts.onProgress?.(loadedBytes, totalBytes);
    await yieldToEventLoop();
  }
  arrays.clear();
  // Headers and tensors the model does not use were never counted; the load is complete.
  opts.onProgress?.(totalBytes, totalBytes);
  return new LoadedModel(
    dir,
    config,
    model,
    await fingerprint,
    generation,
    weightBytes,
    opts.prefillChunkTokens ?? PREFILL_CHUNK_TOKENS,
  );
}

interface WeightFile {
  name: string;
  path: string;
  bytes: number;
  tensors: Map<string, TensorInfo>;
}

/** Finds the weight files: the shards an index names, or the single model.safetensors. */
function listWeightFiles(dir: string): WeightFile[] {
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

type LoadStep =
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
function planWeights(model: CausalLM, config: ModelConfig, files: WeightFile[]): LoadStep[] {
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

function readGenerationDefaults(dir: string, config: ModelConfig): GenerationDefaults {
  const file = path.join(dir, "generation_config.json");
  let g: Record<string, unknown> = {};
  if (fs.existsSync(file)) {
    try {
      g = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (err) {
      throw new ModelError(
        "MODEL_INVALID",
        `generation_config.json is not valid JSON: ${(err as Error).message}`,
      );
    }
  }
  const positive = (v: unknown): number | null =>
    typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : null;
  const eos = [
    ...config.eosTokenIds,
    ...tokenIdList(g.eos_token_id, "eos_token_id", "generation_config.json"),
  ];
  const bos = tokenIdList(g.bos_token_id, "bos_token_id", "generation_config.json")[0];
  return {
    bosTokenId: bos ?? config.bosTokenId,
    eosTokenIds: [...new Set(eos)],
    temperature: positive(g.temperature),
    topP: positive(g.top_p),
    topK: positive(g.top_k),
  };
}
