import type { ModelConfig } from "../config";
import type { CausalLM } from "./base";
import * as gemma3Text from "./gemma3_text";
import * as llama from "./llama";
import * as mistral from "./mistral";
import * as qwen2 from "./qwen2";
import * as qwen3 from "./qwen3";
import * as qwen35 from "./qwen3_5";

export type { CausalLM, LogitsFor } from "./base";

/**
 * model_type (config.json) -> constructor of that architecture. Adding an architecture is a file
 * under models/, one entry here, and one entry in test/model/architectures.spec.ts.
 */
export const ARCHITECTURES: Readonly<Record<string, (config: ModelConfig) => CausalLM>> = {
  gemma3_text: gemma3Text.createModel,
  llama: llama.createModel,
  mistral: mistral.createModel,
  qwen2: qwen2.createModel,
  qwen3: qwen3.createModel,
  qwen3_5: qwen35.createModel,
};

/** The model_type values kvpark can run, sorted. */
export const SUPPORTED_MODEL_TYPES: readonly string[] = Object.keys(ARCHITECTURES).sort();
