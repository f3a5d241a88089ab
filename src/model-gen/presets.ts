/**
 * Shapes of the models kvpark generates itself (random weights, real layout). Each preset is the
 * config.json it is written with, minus the fields the generator fills in (vocab_size when it
 * follows the tokenizer, token ids, dtype, quantization).
 */
export interface Preset {
  /** One line for --help and logs. */
  description: string;
  /** Regular tokens of the generated tokenizer (its added tokens come on top). */
  tokenizerVocabSize: number;
  /**
   * The model's vocab_size when it differs from the tokenizer's (Qwen pads its embedding table
   * beyond the tokenizer; those rows are never produced by tokenization). Null: tokenizer total.
   */
  vocabSize: number | null;
  /** config.json fields, in Hugging Face spelling. */
  config: Record<string, unknown>;
}

const QWEN2_COMMON = {
  architectures: ["Qwen2ForCausalLM"],
  model_type: "qwen2",
  hidden_act: "silu",
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  max_position_embeddings: 32768,
  tie_word_embeddings: true,
  use_sliding_window: false,
  sliding_window: 32768,
  attention_dropout: 0.0,
};

/** Every generated model shape by name; the engine also offers each as `-4bit` and `-sharded`. */
export const PRESETS: Readonly<Record<string, Preset>> = {
  tiny: {
    description: "2-layer Qwen2-style model for tests: loads and runs in milliseconds",
    tokenizerVocabSize: 512,
    vocabSize: null,
    config: {
      ...QWEN2_COMMON,
      hidden_size: 64,
      intermediate_size: 128,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      max_position_embeddings: 8192,
      max_window_layers: 2,
    },
  },
  small: {
    description:
      "8-layer Qwen2-style model (~13M parameters besides embeddings): a 4k-token prefill takes seconds",
    tokenizerVocabSize: 8192,
    vocabSize: null,
    config: {
      ...QWEN2_COMMON,
      hidden_size: 384,
      intermediate_size: 1024,
      num_hidden_layers: 8,
      num_attention_heads: 6,
      num_key_value_heads: 2,
      max_window_layers: 8,
    },
  },
  "qwen2.5-0.5b": {
    description: "Qwen2.5-0.5B's exact shape (494M parameters) with random weights, for benchmarks",
    tokenizerVocabSize: 8192,
    vocabSize: 151936,
    config: {
      ...QWEN2_COMMON,
      hidden_size: 896,
      intermediate_size: 4864,
      num_hidden_layers: 24,
      num_attention_heads: 14,
      num_key_value_heads: 2,
      max_window_layers: 21,
    },
  },
};
