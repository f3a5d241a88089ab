/**
 * The architectures every model test runs over: one tiny random config each, chosen so that the
 * architecture's particular code path matters for the logits. Adding an architecture means adding
 * its entry here.
 */
export interface ArchitectureCase {
  name: string;
  /** config.json fields on top of TINY. */
  config: Record<string, unknown>;
}

/** Shared tiny dimensions: 2 layers, 4 query heads sharing 2 KV heads (GQA). */
export const TINY = {
  hidden_size: 64,
  intermediate_size: 128,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  max_position_embeddings: 1024,
};

export const ARCHITECTURE_CASES: ArchitectureCase[] = [
  {
    // original_max_position_embeddings 64 puts the 16-dim head's frequencies in all three llama3
    // bands (kept, blended, divided by factor).
    name: "llama with llama3 rope scaling",
    config: {
      model_type: "llama",
      rope_theta: 500000,
      rope_scaling: {
        rope_type: "llama3",
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      },
      tie_word_embeddings: false,
    },
  },
  {
    name: "llama with attention biases and linear rope scaling",
    config: {
      model_type: "llama",
      attention_bias: true,
      rope_scaling: { type: "linear", factor: 2 },
      tie_word_embeddings: true,
    },
  },
  {
    name: "qwen2 with q/k/v biases",
    config: { model_type: "qwen2", rope_theta: 1000000, tie_word_embeddings: true },
  },
  {
    // head_dim 32 with hidden 64 and 4 heads: projections are wider than the hidden state.
    name: "qwen3 with q/k norms",
    config: { model_type: "qwen3", head_dim: 32, rope_theta: 1000000, tie_word_embeddings: true },
  },
  {
    // A window shorter than the test sequences, so it cuts attention off.
    name: "mistral with a sliding window",
    config: { model_type: "mistral", sliding_window: 6, tie_word_embeddings: false },
  },
  {
    // Three layers with pattern 2: local, global, local, and a window shorter than the test
    // sequences. hidden_size 48 makes sqrt(hidden_size) round in bfloat16 (6.928 -> 6.9375);
    // query_pre_attn_scalar differs from head_dim; the linear rope scaling must reach only the
    // global layer. Tied embeddings are Gemma's default.
    name: "gemma3_text with local and global layers",
    config: {
      model_type: "gemma3_text",
      hidden_size: 48,
      num_hidden_layers: 3,
      head_dim: 32,
      query_pre_attn_scalar: 24,
      sliding_window: 6,
      sliding_window_pattern: 2,
      rope_theta: 1000000,
      rope_local_base_freq: 10000,
      rope_scaling: { rope_type: "linear", factor: 8 },
      hidden_activation: "gelu_pytorch_tanh",
      final_logit_softcapping: null,
      attn_logit_softcapping: null,
    },
  },
  {
    // Four layers with interval 2: Gated DeltaNet, attention, DeltaNet, attention. Two key heads
    // shared by four value heads (repeat), key and value head dims that differ, a kernel-4
    // convolution whose carried rows cross the chunk borders the spec uses (5, 6, then 1 by 1),
    // head_dim 32 with partial_rotary_factor 0.25 (8 rotated dims), and rope settings in
    // rope_parameters as Qwen3.5's configs write them.
    name: "qwen3_5 with Gated DeltaNet and gated attention layers",
    config: {
      model_type: "qwen3_5",
      num_hidden_layers: 4,
      head_dim: 32,
      full_attention_interval: 2,
      linear_num_key_heads: 2,
      linear_num_value_heads: 4,
      linear_key_head_dim: 16,
      linear_value_head_dim: 8,
      linear_conv_kernel_dim: 4,
      rope_parameters: { rope_type: "default", rope_theta: 1000000, partial_rotary_factor: 0.25 },
      tie_word_embeddings: false,
    },
  },
];
