import * as fs from "node:fs";
import * as path from "node:path";
import { ModelError } from "./errors";
import {
  DEFAULTS,
  GEMMA3_DEFAULTS,
  type GemmaFields,
  type Qwen35Fields,
  parseGemma3Fields,
  parseQwen35Fields,
} from "./architecture-config";

export { ModelError, type ModelErrorCode } from "./errors";

/** Llama 3.x frequency-dependent rope scaling (`rope_scaling.rope_type == "llama3"`). */
export interface Llama3RopeScaling {
  type: "llama3";
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** Positions divided by `factor` before rotation (`rope_scaling.rope_type == "linear"`). */
export interface LinearRopeScaling {
  type: "linear";
  factor: number;
}

export type RopeScaling = Llama3RopeScaling | LinearRopeScaling;

/**
 * How a layer attends (Hugging Face's `layer_types` spelling). "linear_attention" is qwen3_5's
 * Gated DeltaNet: a recurrent layer that keeps a fixed-size state instead of keys and values.
 */
export type LayerType = "sliding_attention" | "full_attention" | "linear_attention";

/** qwen3_5's Gated DeltaNet layers (the `linear_*` fields of its config). */
export interface LinearAttentionConfig {
  numKeyHeads: number;
  numValueHeads: number;
  keyHeadDim: number;
  valueHeadDim: number;
  /** Width of the causal depthwise convolution over the projected q/k/v. */
  convKernel: number;
}

/** How an MLX-quantized checkpoint packs one linear or embedding layer. */
export interface QuantizationParams {
  groupSize: number;
  bits: number;
}

/**
 * The `quantization` entry of an mlx-community config: defaults for every packed layer plus the
 * per-layer overrides that mixed-precision conversions write (keyed by module path, e.g.
 * `model.layers.0.mlp.down_proj`). Which tensors are packed is told by the presence of
 * `<module>.scales` in the weights, as mlx-lm does.
 */
export interface QuantizationConfig extends QuantizationParams {
  perLayer: Record<string, QuantizationParams>;
}

/** A validated `config.json`, in the units the model code uses. */
export interface ModelConfig {
  modelType: string;
  hiddenSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  headDim: number;
  intermediateSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  vocabSize: number;
  tieWordEmbeddings: boolean;
  /** q/k/v (and for llama, o) projections carry a bias. Always true for qwen2. */
  attentionBias: boolean;
  /**
   * Sliding window in tokens (Mistral's, and Gemma 3's local layers'): a query at position p
   * attends to keys at positions p - slidingWindow + 1 ..= p (as Hugging Face's Mistral and
   * Gemma 3 do). The KV cache still keeps every position, so a prefix cache can restore any of
   * them. Null means full causal attention. Which layers apply it: layerTypes.
   */
  slidingWindow: number | null;
  /**
   * Attention kind of each layer, numHiddenLayers entries: "sliding_attention" layers apply
   * slidingWindow, "full_attention" layers see every earlier position. Gemma 3 interleaves both;
   * in other architectures every layer is sliding exactly when slidingWindow is set.
   */
  layerTypes: LayerType[];
  /**
   * Rope base of the sliding layers when it differs from ropeTheta (Gemma 3's
   * `rope_local_base_freq`); ropeScaling then applies to the full-attention layers only. Null: every
   * layer uses ropeTheta and ropeScaling.
   */
  ropeLocalTheta: number | null;
  /** Gemma's `query_pre_attn_scalar`: the softmax scale is its inverse square root. Null: head_dim. */
  queryPreAttnScalar: number | null;
  /**
   * Leading dimensions of each head that rope rotates: head_dim * partial_rotary_factor (qwen3_5),
   * else head_dim. The rest pass through unrotated.
   */
  ropeDims: number;
  /** The recurrent layers' shapes, for configs with "linear_attention" layers; else null. */
  linearAttention: LinearAttentionConfig | null;
  quantization: QuantizationConfig | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
}

/** Bit widths the bundled MLX build can dequantize. */
export const QUANTIZATION_BITS = [2, 4, 8] as const;
/** Group sizes the bundled MLX build can dequantize. */
export const QUANTIZATION_GROUP_SIZES = [32, 64, 128] as const;

type Json = Record<string, unknown>;

/** Reads and validates `<dir>/config.json`. */
export function readModelConfig(dir: string): ModelConfig {
  const file = path.join(dir, "config.json");
  if (!fs.existsSync(file)) {
    throw new ModelError(
      "MODEL_FILE_MISSING",
      `config.json not found in ${dir}: point --model at a Hugging Face or mlx-community model directory`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (err) {
    throw new ModelError(
      "MODEL_INVALID",
      `config.json in ${dir} is not valid JSON: ${(err as Error).message}`,
    );
  }
  return parseModelConfig(json, file);
}

/**
 * Validates a parsed config.json. `file` only names the source in error messages. Checks every
 * field the model code relies on, so that a bad config fails here with a message rather than
 * inside MLX, where an exception aborts the process.
 */
export function parseModelConfig(json: unknown, file = "config.json"): ModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ModelError("MODEL_INVALID", `${file} must hold a JSON object`);
  }
  const c = json as Json;
  const invalid = (field: string, why: string): ModelError =>
    new ModelError("MODEL_INVALID", `${file}: field "${field}" ${why}`);

  const int = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (v === undefined) throw invalid(field, "is required");
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw invalid(field, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const num = (field: string, fallback: number): number => {
    const v = c[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw invalid(field, `must be a positive number, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const bool = (field: string, fallback: boolean): boolean => {
    const v = c[field] ?? fallback;
    if (typeof v !== "boolean") throw invalid(field, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };

  const modelType = c.model_type;
  if (typeof modelType !== "string" || modelType === "") {
    throw invalid(
      "model_type",
      'is required (e.g. "llama", "qwen2", "qwen3", "qwen3_5", "mistral", "gemma3_text")',
    );
  }
  const defaults = DEFAULTS[modelType] ?? DEFAULTS.llama;

  const hiddenSize = int("hidden_size");
  const numAttentionHeads = int("num_attention_heads");
  const numKeyValueHeads = int("num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    throw invalid(
      "num_key_value_heads",
      `(${numKeyValueHeads}) must divide num_attention_heads (${numAttentionHeads})`,
    );
  }
  if (c.head_dim == null && hiddenSize % numAttentionHeads !== 0) {
    throw invalid(
      "head_dim",
      `is required when hidden_size (${hiddenSize}) is not a multiple of num_attention_heads`,
    );
  }
  const headDim = int("head_dim", hiddenSize / numAttentionHeads);
  if (headDim % 2 !== 0) throw invalid("head_dim", `must be even for rotary embeddings, got ${headDim}`);

  const maxPositionEmbeddings = int("max_position_embeddings", defaults.maxPositionEmbeddings);
  const numHiddenLayers = int("num_hidden_layers");

  // Qwen2/3 configs always carry sliding_window but only use it when use_sliding_window is set,
  // and then only on some layers; that variant is not implemented, so refuse it rather than run
  // the wrong attention.
  let slidingWindow: number | null = null;
  let gemma: GemmaFields | null = null;
  let qwen35: Qwen35Fields | null = null;
  if (modelType === "qwen3_5") qwen35 = parseQwen35Fields(c, numHiddenLayers, headDim, file);
  if (modelType === "mistral") {
    slidingWindow = c.sliding_window == null ? null : int("sliding_window");
  } else if (modelType === "gemma3_text") {
    gemma = parseGemma3Fields(c, numHiddenLayers, file);
    slidingWindow = int("sliding_window", GEMMA3_DEFAULTS.slidingWindow);
  } else if (c.use_sliding_window === true) {
    throw new ModelError(
      "MODEL_UNSUPPORTED",
      `${file}: "use_sliding_window": true is not supported for model_type "${modelType}"; set it to false`,
    );
  }

  // The architecture, not the config, decides where biases go for qwen2.
  const attentionBias = modelType === "qwen2" ? true : bool("attention_bias", false);
  const layerType: LayerType = slidingWindow === null ? "full_attention" : "sliding_attention";
  if (c.mlp_bias === true) {
    throw new ModelError(
      "MODEL_UNSUPPORTED",
      `${file}: "mlp_bias": true is not supported; kvpark's MLP has no bias`,
    );
  }

  return {
    modelType,
    hiddenSize,
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    intermediateSize: int("intermediate_size"),
    rmsNormEps: num("rms_norm_eps", defaults.rmsNormEps),
    ropeTheta: qwen35?.ropeTheta ?? num("rope_theta", defaults.ropeTheta),
    ropeScaling: qwen35 ? null : parseRopeScaling(c.rope_scaling, file),
    maxPositionEmbeddings,
    vocabSize: int("vocab_size"),
    // Gemma ties its output projection to the embeddings unless told otherwise.
    tieWordEmbeddings: bool("tie_word_embeddings", modelType === "gemma3_text"),
    attentionBias,
    slidingWindow,
    layerTypes:
      gemma?.layerTypes ?? qwen35?.layerTypes ?? Array.from({ length: numHiddenLayers }, () => layerType),
    ropeLocalTheta: gemma?.ropeLocalTheta ?? null,
    queryPreAttnScalar: gemma?.queryPreAttnScalar ?? null,
    ropeDims: qwen35?.ropeDims ?? headDim,
    linearAttention: qwen35?.linearAttention ?? null,
    quantization: parseQuantization(c.quantization, file),
    bosTokenId: optionalTokenId(c.bos_token_id, "bos_token_id", file),
    eosTokenIds: tokenIdList(c.eos_token_id, "eos_token_id", file),
  };
}

function parseRopeScaling(value: unknown, file: string): RopeScaling | null {
  if (value == null) return null;
  if (typeof value !== "object" || Array.isArray(value)) {
    throw new ModelError("MODEL_INVALID", `${file}: field "rope_scaling" must be an object or null`);
  }
  const r = value as Json;
  // Older configs spell the kind "type", newer ones "rope_type".
  const kind = r.rope_type ?? r.type;
  const factor = (field: string, fallback?: number): number => {
    const v = r[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw new ModelError(
        "MODEL_INVALID",
        `${file}: field "rope_scaling.${field}" must be a positive number, got ${JSON.stringify(v)}`,
      );
    }
    return v;
  };
  switch (kind) {
    case "default":
      return null;
    case "linear":
      return { type: "linear", factor: factor("factor") };
    case "llama3": {
      const scaling: Llama3RopeScaling = {
        type: "llama3",
        factor: factor("factor"),
        lowFreqFactor: factor("low_freq_factor", 1),
        highFreqFactor: factor("high_freq_factor", 4),
        originalMaxPositionEmbeddings: factor("original_max_position_embeddings", 8192),
      };
      if (scaling.highFreqFactor <= scaling.lowFreqFactor) {
        throw new ModelError(
          "MODEL_INVALID",
          `${file}: "rope_scaling.high_freq_factor" must be greater than "low_freq_factor"`,
        );
      }
      return scaling;
    }
    default:
      throw new ModelError(
        "MODEL_UNSUPPORTED",
        `${file}: rope_scaling type ${JSON.stringify(kind)} is not supported; supported: "default", "linear", "llama3"`,
      );
  }
}

function parseQuantization(value: unknown, file: string): QuantizationConfig | null {
  if (value == null) return null;
  const params = (v: unknown, where: string): QuantizationParams => {
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new ModelError(
        "MODEL_INVALID",
        `${file}: field "${where}" must be an object with group_size and bits`,
      );
    }
    const q = v as Json;
    const bits = q.bits;
    const groupSize = q.group_size;
    if (!QUANTIZATION_BITS.includes(bits as (typeof QUANTIZATION_BITS)[number])) {
      throw new ModelError(
        "MODEL_UNSUPPORTED",
        `${file}: "${where}.bits" is ${JSON.stringify(bits)}; supported: ${QUANTIZATION_BITS.join(", ")}`,
      );
    }
    if (!QUANTIZATION_GROUP_SIZES.includes(groupSize as (typeof QUANTIZATION_GROUP_SIZES)[number])) {
      throw new ModelError(
        "MODEL_UNSUPPORTED",
        `${file}: "${where}.group_size" is ${JSON.stringify(groupSize)}; supported: ${QUANTIZATION_GROUP_SIZES.join(", ")}`,
      );
    }
    return { groupSize: groupSize as number, bits: bits as number };
  };
  const base = params(value, "quantization");
  const perLayer: Record<string, QuantizationParams> = {};
  for (const [key, v] of Object.entries(value as Json)) {
    if (key === "group_size" || key === "bits" || key === "mode") continue;
    // A `false` entry marks a layer left unquantized; the absence of its scales says the same.
    if (v === false) continue;
    perLayer[key] = params(v, `quantization.${key}`);
  }
  return { ...base, perLayer };
}

function optionalTokenId(value: unknown, field: string, file: string): number | null {
  if (value == null) return null;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw new ModelError(
      "MODEL_INVALID",
      `${file}: field "${field}" must be a token id, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** Reads eos_token_id, which configs write either as one id or as a list. */
export function tokenIdList(value: unknown, field: string, file: string): number[] {
  if (value == null) return [];
  const list = Array.isArray(value) ? value : [value];
  return list.map((v) => optionalTokenId(v, field, file) as number);
}
