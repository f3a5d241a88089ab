import { core as mx } from "@frost-beta/mlx";
import { Sampler } from "../../src/model/sampler";

/** Logits whose softmax is exactly `probs`. */
function logitsOf(probs: number[]): mx.array {
  return mx.array([probs.map((p) => Math.log(p))], mx.float32);
}

function draw(sampler: Sampler, logits: mx.array, n: number): number[] {
  return Array.from({ length: n }, () => sampler.sample(logits));
}

const SPREAD = logitsOf([0.05, 0.3, 0.1, 0.4, 0.15]);

describe("Sampler", () => {
  test("temperature 0 is greedy", () => {
    expect(new Sampler().sample(SPREAD)).toBe(3);
    expect(
      new Sampler({ temperature: 0, topK: 3, seed: 9 }).sample(mx.array([1, 7, 7.5, -2], mx.float32)),
    ).toBe(2);
  });

  test("vocabLimit keeps padding ids out", () => {
    const logits = mx.array([[0.1, 0.5, 0.2, 9, 9]], mx.float32);
    expect(new Sampler({ vocabLimit: 3 }).sample(logits)).toBe(1);
    const sampled = draw(new Sampler({ temperature: 1, vocabLimit: 3, seed: 1 }), logits, 200);
    expect(Math.max(...sampled)).toBeLessThan(3);
  });

  test("the same seed gives the same tokens, whatever other samplers do in between", () => {
    const alone = draw(new Sampler({ temperature: 1, seed: 42 }), SPREAD, 30);
    const a = new Sampler({ temperature: 1, seed: 42 });
    const b = new Sampler({ temperature: 1, seed: 43 });
    const interleaved: number[] = [];
    const other: number[] = [];
    for (let i = 0; i < 30; i++) {
      other.push(b.sample(SPREAD), b.sample(SPREAD));
      interleaved.push(a.sample(SPREAD));
    }
    expect(interleaved).toEqual(alone);
    expect(other.slice(0, 30)).not.toEqual(alone);
  });

  test("temperature 1 samples the softmax distribution", () => {
    const counts = [0, 0, 0, 0, 0];
    for (const t of draw(new Sampler({ temperature: 1, seed: 5 }), SPREAD, 2000)) counts[t] += 1;
    [0.05, 0.3, 0.1, 0.4, 0.15].forEach((p, i) => expect(Math.abs(counts[i] / 2000 - p)).toBeLessThan(0.04));
  });

  test("a low temperature sharpens towards the most likely token", () => {
    const sampled = draw(new Sampler({ temperature: 0.05, seed: 5 }), SPREAD, 100);
    expect(sampled.filter((t) => t === 3).length).toBeGreaterThan(95);
  });

  test("top_k keeps the k most likely tokens", () => {
    const sampled = new Set(draw(new Sampler({ temperature: 1, topK: 2, seed: 3 }), SPREAD, 300));
    expect([...sampled].sort()).toEqual([1, 3]);
  });

  test("top_p keeps the smallest set reaching p, including the token that crosses it", () => {
    // Sorted: 0.4 (id 3), 0.3 (id 1), 0.15 (id 4), ... 0.4 < 0.6, so id 1 joins and reaches 0.7.
    const sampled = new Set(draw(new Sampler({ temperature: 1, topP: 0.6, seed: 3 }), SPREAD, 300));
    expect([...sampled].sort()).toEqual([1, 3]);
    const wider = new Set(draw(new Sampler({ temperature: 1, topP: 0.75, seed: 3 }), SPREAD, 300));
    expect([...wider].sort()).toEqual([1, 3, 4]);
    const combined = new Set(draw(new Sampler({ temperature: 1, topK: 3, topP: 0.5, seed: 3 }), SPREAD, 300));
    expect([...combined].sort()).toEqual([1, 3]);
  });

  test("invalid settings are refused", () => {
    expect(() => new Sampler({ temperature: -1 })).toThrow(
      "temperature must be a finite number >= 0, got -1",
    );
    expect(() => new Sampler({ topP: 0 })).toThrow("topP must be in (0, 1], got 0");
    expect(() => new Sampler({ topK: 1.5 })).toThrow("topK must be an integer >= 0, got 1.5");
    expect(() => new Sampler({ seed: -3 })).toThrow("seed must be a non-negative integer, got -3");
    expect(() => new Sampler({ vocabLimit: 0 })).toThrow("vocabLimit must be a positive integer, got 0");
  });
});
