import { core as mx } from "@frost-beta/mlx";

/** Sampling settings of one request. */
export interface SamplerOptions {
  /** 0 picks the most likely token (greedy); larger values flatten the distribution. Default 0. */
  temperature?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches topP. 1 (default) keeps all. */
  topP?: number;
  /** Keep only the topK most likely tokens. 0 (default) keeps all. */
  topK?: number;
  /** Seed of this request's random stream. Default 0. */
  seed?: number;
  /**
   * Ids at or above this are never chosen: a model's embedding table is often padded beyond the
   * tokenizer's vocabulary (Qwen's is), and a padding id cannot be detokenized. Default: no limit.
   */
  vocabLimit?: number;
}

/**
 * Picks the next token from logits. Greedy when temperature is 0; otherwise softmax(logits / T)
 * restricted by top-k, then top-p, sampled with a random stream owned by this sampler: a key
 * from the seed, split once per sampled token. The same seed and logits give the same tokens no
 * matter what other requests sample in between.
 */
export class Sampler {
  readonly temperature: number;
  readonly topP: number;
  readonly topK: number;
  readonly vocabLimit: number | null;
  private key: mx.array;

  constructor(opts: SamplerOptions = {}) {
    this.temperature = opts.temperature ?? 0;
    this.topP = opts.topP ?? 1;
    this.topK = opts.topK ?? 0;
    this.vocabLimit = opts.vocabLimit ?? null;
    const seed = opts.seed ?? 0;
    if (!(this.temperature >= 0) || !Number.isFinite(this.temperature)) {
      throw new RangeError(`temperature must be a finite number >= 0, got ${opts.temperature}`);
    }
    if (!(this.topP > 0 && this.topP <= 1)) throw new RangeError(`topP must be in (0, 1], got ${opts.topP}`);
    if (!Number.isInteger(this.topK) || this.topK < 0)
      throw new RangeError(`topK must be an integer >= 0, got ${opts.topK}`);
    if (this.vocabLimit !== null && (!Number.isInteger(this.vocabLimit) || this.vocabLimit < 1)) {
      throw new RangeError(`vocabLimit must be a positive integer, got ${opts.vocabLimit}`);
    }
    if (!Number.isInteger(seed) || seed < 0 || seed > Number.MAX_SAFE_INTEGER) {
      throw new RangeError(`seed must be a non-negative integer, got ${opts.seed}`);
    }
    this.key = mx.random.key(seed);
  }

  /** Chooses a token id from logits [1, vocab] or [vocab] (float32); evaluates them. */
  sample(logits: mx.array): number {
    let scores = logits.flatten();
    if (this.vocabLimit !== null && this.vocabLimit < scores.shape[0]) {
      scores = scores.index(mx.Slice(0, this.vocabLimit));
    }
    if (this.temperature === 0) return mx.argmax(scores).item() as number;

    const [next, stepKey] = mx.random.split(this.key, 2);
    this.key = next;
    scores = mx.divide(scores, this.temperature);
    // Candidate ids as positions in the full vocabulary, or null while every id is a candidate.
    let ids: mx.array | null = null;
    const vocab = scores.shape[0];
    if (this.topK > 0 && this.topK < vocab) {
      ids = mx.argpartition(mx.negative(scores), this.topK - 1).index(mx.Slice(0, this.topK));
      scores = mx.take(scores, ids);
    }
    if (this.topP < 1) {
      const order = mx.argsort(mx.negative(scores));
      const sorted = mx.take(scores, order);
      const probs = mx.softmax(sorted, -1, true);
      // Keep a token while the probability of the tokens before it has not yet reached topP, so
      // the token that crosses the threshold is kept too.
      const before = mx.subtract(mx.cumsum(probs), probs);
      scores = mx.where(mx.less(before, this.topP), sorted, -Infinity);
      ids = ids ? mx.take(ids, order) : order;
    }
    const choice = mx.random.categorical(scores, -1, undefined, undefined, stepKey);
    return (ids ? mx.take(ids, choice) : choice).item() as number;
  }
}
