import { core as mx } from "@frost-beta/mlx";
import type { SamplingSettings } from "./protocol.js";

/**
 * Picks the next token from the logits of the last position. Greedy at temperature 0; otherwise
 * temperature, top-k and top-p (nucleus) filtering, then a categorical draw with a random key derived
 * from the request's seed and the step number, so the same seed gives the same tokens whatever else
 * the engine is doing.
 */
export class Sampler {
  private step = 0;

  constructor(private readonly settings: Pick<SamplingSettings, "temperature" | "topK" | "topP" | "seed">) {}

  /** `logits`: [..., vocab] float32; only the last row counts. Returns the token id. */
  sample(logits: mx.array): number {
    const vocab = logits.shape[logits.shape.length - 1];
    const row = logits.reshape(-1, vocab).index(-1);
    const { temperature, topK, topP, seed } = this.settings;
    this.step++;
    if (temperature === 0) return mx.argmax(row).item() as number;

    let scaled = mx.divide(row.astype(mx.float32), mx.array(temperature, mx.float32));
    if ((topK > 0 && topK < vocab) || topP < 1) {
      // The smallest logit kept by top-k and by top-p; everything below the larger of the two goes.
      const sorted = mx.negative(mx.sort(mx.negative(scaled)));
      let threshold: mx.array | undefined;
      if (topK > 0 && topK < vocab) threshold = sorted.index(topK - 1);
      if (topP < 1) {
        const probs = mx.softmax(sorted, -1);
        // A token is kept while the mass before it is below top_p (so at least one is always kept).
        const before = mx.subtract(mx.cumsum(probs), probs);
        const kept = mx.sum(mx.less(before, mx.array(topP, mx.float32))).item() as number;
        const t = sorted.index(Math.max(1, kept) - 1);
        threshold = threshold ? mx.maximum(threshold, t) : t;
      }
      scaled = mx.where(mx.less(scaled, threshold!), mx.array(-Infinity, mx.float32), scaled);
    }
    const key = mx.random.key((seed + this.step * 0x9e3779b1) % 0x100000000);
    return mx.random.categorical(scaled, -1, undefined, undefined, key).item() as number;
  }
}
