import { core as mx } from "@frost-beta/mlx";
import { Sampler } from "./sampler";

const logits = mx.array([[0.1, 3.0, 2.9, -1.0, 0.5]], mx.float32);

function draws(
  settings: { temperature: number; topK: number; topP: number; seed: number },
  n: number,
): number[] {
  const s = new Sampler(settings);
  return Array.from({ length: n }, () => s.sample(logits));
}

describe("Sampler", () => {
  it("is greedy at temperature 0", () => {
    expect(draws({ temperature: 0, topK: 0, topP: 1, seed: 1 }, 3)).toEqual([1, 1, 1]);
  });

  it("is reproducible for a seed and differs across seeds", () => {
    const a = draws({ temperature: 1.5, topK: 0, topP: 1, seed: 42 }, 40);
    expect(draws({ temperature: 1.5, topK: 0, topP: 1, seed: 42 }, 40)).toEqual(a);
    expect(draws({ temperature: 1.5, topK: 0, topP: 1, seed: 43 }, 40)).not.toEqual(a);
    expect(new Set(a).size).toBeGreaterThan(2);
  });

  it("keeps only the k most likely tokens", () => {
    expect(new Set(draws({ temperature: 5, topK: 2, topP: 1, seed: 3 }, 60))).toEqual(new Set([1, 2]));
  });

  it("keeps the smallest set reaching top_p", () => {
    // softmax: token 1 ≈ 0.49, token 2 ≈ 0.44: top_p 0.5 keeps both, 0.4 keeps only token 1.
    expect(new Set(draws({ temperature: 1, topK: 0, topP: 0.5, seed: 9 }, 60))).toEqual(new Set([1, 2]));
    expect(new Set(draws({ temperature: 1, topK: 0, topP: 0.4, seed: 9 }, 30))).toEqual(new Set([1]));
  });
});
