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
import { type WeightFile, listWeightFiles, planWeights } from "./weight-plan";

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
