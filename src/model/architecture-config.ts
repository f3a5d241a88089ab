import { ModelError } from "./errors";
import type { LayerType, LinearAttentionConfig } from "./config";

/**
 * The parts of config.json particular to one architecture: Hugging Face's defaults for the fields
 * a config may leave out, and the settings only Gemma 3 and Qwen3.5 read.
 */

type Json = Record<string, unknown>;

/** Hugging Face's per-architecture defaults for fields a config.json may leave out. */
export const DEFAULTS: Record<
  string,
  { rmsNormEps: number; ropeTheta: number; maxPositionEmbeddings: number }
> = {
  llama: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 2048 },
  mistral: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768 },
  qwen2: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768 },
  qwen3: { rmsNormEps: 1e-6, ropeTheta: 10000, maxPositionEmbeddings: 32768 },
  gemma3_text: { rmsNormEps: 1e-6, ropeTheta: 1000000, maxPositionEmbeddings: 131072 },
  qwen3_5: { rmsNormEps: 1e-6, ropeTheta: 100000, maxPositionEmbeddings: 131072 },
};

/** Hugging Face's Gemma3TextConfig defaults for the Gemma-only fields. */
export const GEMMA3_DEFAULTS = {
  slidingWindow: 4096,
  slidingWindowPattern: 6,
  ropeLocalBaseFreq: 10000,
  queryPreAttnScalar: 256,
};

/** The fields only gemma3_text reads, validated. */
export interface GemmaFields {
  layerTypes: LayerType[];
  ropeLocalTheta: number;
  queryPreAttnScalar: number;
}

/**
 * Gemma 3's text settings. Which layers slide comes from `layer_types` when the config lists it
 * (transformers 4.53 and later write it), else from `sliding_window_pattern`: every pattern-th
 * layer is global, as in Gemma 3's released configs (pattern 6: five local layers, then one
 * global). Settings Gemma 3 does not use but its config class accepts are refused rather than
 * ignored.
 */
export function parseGemma3Fields(c: Json, numHiddenLayers: number, file: string): GemmaFields {
  const invalid = (field: string, why: string): ModelError =>
    new ModelError("MODEL_INVALID", `${file}: field "${field}" ${why}`);
  const unsupported = (what: string, hint: string): ModelError =>
    new ModelError(
      "MODEL_UNSUPPORTED",
      `${file}: ${what} is not supported for model_type "gemma3_text"; ${hint}`,
    );
  const positive = (field: string, fallback: number, integer: boolean): number => {
    const v = c[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
      throw invalid(field, `must be a positive ${integer ? "integer" : "number"}, got ${JSON.stringify(v)}`);
    }
    return v;
  };

  const activation = c.hidden_activation ?? c.hidden_act ?? "gelu_pytorch_tanh";
  if (activation !== "gelu_pytorch_tanh") {
    throw unsupported(`hidden_activation ${JSON.stringify(activation)}`, 'only "gelu_pytorch_tanh" is');
  }
  for (const field of ["final_logit_softcapping", "attn_logit_softcapping"]) {
    if (c[field] != null) {
      throw unsupported(`"${field}": ${JSON.stringify(c[field])}`, "Gemma 3 sets it to null");
    }
  }
  if (c.use_bidirectional_attention === true) {
    throw unsupported('"use_bidirectional_attention": true', "kvpark runs causal language models");
  }
  // Newer transformers releases may write the rope settings per layer type in one object; reading
  // it is not implemented, and ignoring it could drop the global layers' scaling.
  if (c.rope_parameters != null) {
    throw unsupported('"rope_parameters"', "write rope_theta, rope_local_base_freq and rope_scaling instead");
  }

  let layerTypes: LayerType[];
  if (c.layer_types != null) {
    layerTypes = parseLayerTypes(
      c.layer_types,
      numHiddenLayers,
      ["sliding_attention", "full_attention"],
      "gemma3_text",
      file,
    );
  } else {
    const pattern = positive("sliding_window_pattern", GEMMA3_DEFAULTS.slidingWindowPattern, true);
    layerTypes = Array.from({ length: numHiddenLayers }, (_, i) =>
      (i + 1) % pattern === 0 ? "full_attention" : "sliding_attention",
    );
  }
  return {
    layerTypes,
    ropeLocalTheta: positive("rope_local_base_freq", GEMMA3_DEFAULTS.ropeLocalBaseFreq, false),
    queryPreAttnScalar: positive("query_pre_attn_scalar", GEMMA3_DEFAULTS.queryPreAttnScalar, false),
  };
}

/** The fields only qwen3_5 reads, validated. */
export interface Qwen35Fields {
  layerTypes: LayerType[];
  linearAttention: LinearAttentionConfig;
  ropeTheta: number;
  ropeDims: number;
}

/**
 * Qwen3.5 dense text models (mlx-lm models/qwen3_5.py, the text part of Hugging Face's
 * Qwen3_5 config, written flat). Which layers are Gated DeltaNet ("linear_attention") comes from
 * `layer_types` when listed, else every `full_attention_interval`-th layer attends. Rope settings
 * sit either in `rope_parameters` (rope_theta, partial_rotary_factor, and an `mrope_section` that
 * changes nothing for text, whose three position ids are equal) or at the top level. Mixture-of-
 * experts variants and scaled rope are refused.
 */
export function parseQwen35Fields(
  c: Json,
  numHiddenLayers: number,
  headDim: number,
  file: string,
): Qwen35Fields {
  const invalid = (field: string, why: string): ModelError =>
    new ModelError("MODEL_INVALID", `${file}: field "${field}" ${why}`);
  const unsupported = (what: string, hint: string): ModelError =>
    new ModelError(
      "MODEL_UNSUPPORTED",
      `${file}: ${what} is not supported for model_type "qwen3_5"; ${hint}`,
    );
  const positive = (source: Json, field: string, fallback: number, integer: boolean): number => {
    const v = source[field] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
      throw invalid(field, `must be a positive ${integer ? "integer" : "number"}, got ${JSON.stringify(v)}`);
    }
    return v;
  };

  // Qwen3.5's mixture-of-experts models (model_type "qwen3_5_moe" in their own configs) would also be
  // recognised here by their expert settings if relabelled.
  for (const field of ["num_experts", "num_experts_per_tok", "moe_intermediate_size"]) {
    if (typeof c[field] === "number" && (c[field] as number) > 0) {
      throw unsupported(
        `mixture of experts ("${field}": ${c[field]})`,
        "supported: the dense Qwen3.5 models, whose config has no experts",
      );
    }
  }
  if (c.text_config != null) {
    throw unsupported('a nested "text_config"', "write the text model's fields at the top level");
  }
  let rope: Json = c;
  if (c.rope_parameters != null) {
    if (typeof c.rope_parameters !== "object" || Array.isArray(c.rope_parameters)) {
      throw invalid("rope_parameters", "must be an object");
    }
    rope = c.rope_parameters as Json;
  }
  const ropeType = rope.rope_type ?? rope.type ?? "default";
  if (ropeType !== "default") throw unsupported(`rope type ${JSON.stringify(ropeType)}`, 'only "default" is');
  if (c.rope_scaling != null) throw unsupported('"rope_scaling"', "qwen3_5 rotates without scaling");
  const factor = positive(
    rope,
    "partial_rotary_factor",
    positive(c, "partial_rotary_factor", 0.25, false),
    false,
  );
  const ropeDims = Math.round(headDim * factor);
  if (factor > 1 || ropeDims % 2 !== 0 || ropeDims === 0) {
    throw invalid(
      "partial_rotary_factor",
      `must rotate an even number of head_dim's ${headDim} dims, got ${factor}`,
    );
  }

  const linearAttention: LinearAttentionConfig = {
    numKeyHeads: positive(c, "linear_num_key_heads", 16, true),
    numValueHeads: positive(c, "linear_num_value_heads", 32, true),
    keyHeadDim: positive(c, "linear_key_head_dim", 128, true),
    valueHeadDim: positive(c, "linear_value_head_dim", 128, true),
    convKernel: positive(c, "linear_conv_kernel_dim", 4, true),
  };
  if (linearAttention.numValueHeads % linearAttention.numKeyHeads !== 0) {
    throw invalid("linear_num_key_heads", "must divide linear_num_value_heads");
  }
  if (linearAttention.convKernel < 2) throw invalid("linear_conv_kernel_dim", "must be at least 2");

  let layerTypes: LayerType[];
  if (c.layer_types != null) {
    layerTypes = parseLayerTypes(
      c.layer_types,
      numHiddenLayers,
      ["linear_attention", "full_attention"],
      "qwen3_5",
      file,
    );
  } else {
    const interval = positive(c, "full_attention_interval", 4, true);
    layerTypes = Array.from({ length: numHiddenLayers }, (_, i) =>
      (i + 1) % interval === 0 ? "full_attention" : "linear_attention",
    );
  }
  // Token positions (a cache's offset) are counted by the attention layers.
  if (!layerTypes.includes("full_attention")) {
    throw invalid("layer_types", "must include at least one full_attention layer");
  }
  const ropeTheta = positive(
    rope,
    "rope_theta",
    positive(c, "rope_theta", DEFAULTS.qwen3_5.ropeTheta, false),
    false,
  );
  return { layerTypes, linearAttention, ropeTheta, ropeDims };
}

/**
 * A config's `layer_types`: one entry per layer, each one of `supported`. A list of the wrong shape
 * is MODEL_INVALID; a layer kind kvpark does not run (a future or another architecture's) is
 * MODEL_UNSUPPORTED, naming the kinds it runs.
 */
function parseLayerTypes(
  value: unknown,
  numHiddenLayers: number,
  supported: readonly LayerType[],
  modelType: string,
  file: string,
): LayerType[] {
  const kinds = supported.map((t) => `"${t}"`).join(", ");
  if (
    !Array.isArray(value) ||
    value.length !== numHiddenLayers ||
    !value.every((t) => typeof t === "string")
  ) {
    throw new ModelError(
      "MODEL_INVALID",
      `${file}: field "layer_types" must list one of ${kinds} for each of the ${numHiddenLayers} layers`,
    );
  }
  const unknown = value.findIndex((t) => !supported.includes(t as LayerType));
  if (unknown >= 0) {
    throw new ModelError(
      "MODEL_UNSUPPORTED",
      `${file}: layer type ${JSON.stringify(value[unknown])} (layer ${unknown}) is not supported for model_type "${modelType}"; supported: ${kinds}`,
    );
  }
  return value as LayerType[];
}
