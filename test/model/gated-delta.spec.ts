import { core as mx } from "@frost-beta/mlx";
import {
  DELTA_CHUNK_TOKENS as C,
  type DeltaInputs,
  chunkedDeltaRule,
  gatedDeltaRule,
  steppedDeltaRule,
} from "../../src/model/models/gated-delta";

const H = 4;
const DK = 32;
const DV = 16;

function unit(x: mx.array): mx.array {
  return mx.multiply(x, mx.rsqrt(mx.add(mx.sum(mx.square(x), -1, true), 1e-6)));
}

/** Random inputs shaped as Gated DeltaNet makes them: unit q (scaled) and k, beta in (0, 1). */
function inputs(
  tokens: number,
  seed: number,
  logDecay: (shape: number[], key: mx.array) => mx.array,
): DeltaInputs {
  const key = (i: number) => mx.random.key(seed * 10 + i);
  return {
    q: mx.multiply(unit(mx.random.normal([1, tokens, H, DK], mx.float32, 0, 1, key(1))), 1 / Math.sqrt(DK)),
    k: unit(mx.random.normal([1, tokens, H, DK], mx.float32, 0, 1, key(2))),
    v: mx.random.normal([1, tokens, H, DV], mx.float32, 0, 1, key(3)),
    logDecay: logDecay([1, tokens, H], key(4)),
    beta: mx.sigmoid(mx.random.normal([1, tokens, H], mx.float32, 0, 1, key(5))),
  };
}

/** Decay spread over (0, 1) as a trained layer's is: log g = -softplus(normal). */
const typical = (shape: number[], key: mx.array) =>
  mx.negative(mx.logaddexp(mx.random.normal(shape, mx.float32, 0, 1, key), 0));
/** Decay within 1e-4 of 1. */
const nearOne = (shape: number[], key: mx.array) =>
  mx.multiply(mx.random.uniform(0, 1, shape, mx.float32, key), -1e-4);
/** Decay near 0 (g <= e^-20): a chunk's cumulative decay underflows float32 many times over. */
const nearZero = (shape: number[], key: mx.array) =>
  mx.subtract(-20, mx.multiply(mx.random.uniform(0, 1, shape, mx.float32, key), 30));

function maxAbsDiff(a: mx.array, b: mx.array): number {
  return mx.max(mx.abs(mx.subtract(a, b))).item() as number;
}

function finite(a: mx.array): boolean {
  return !(mx.any(mx.logicalOr(mx.isnan(a), mx.isinf(a))).item() as boolean);
}

interface Run {
  y: mx.array;
  S: mx.array;
  captured: Map<number, mx.array>;
}

function run(
  form: "step" | "chunked",
  x: DeltaInputs,
  S0: mx.array,
  position: number,
  blockTokens: number,
): Run {
  const captured = new Map<number, mx.array>();
  const capturesAt = (p: number) => blockTokens > 0 && p % blockTokens === 0;
  const capture = (i: number, S: mx.array) => captured.set(position + i + 1, S);
  const [y, S] =
    form === "step"
      ? steppedDeltaRule(x, S0, position, capturesAt, capture)
      : chunkedDeltaRule(x, S0, position, C, capturesAt, capture);
  mx.eval(y, S, ...captured.values());
  return { y, S, captured };
}

function randomState(seed: number): mx.array {
  return mx.random.normal([1, H, DV, DK], mx.float32, 0, 1, mx.random.key(seed));
}

describe("gated delta rule: chunked form against the step form", () => {
  const lengths = [1, C - 1, C, C + 1, 3 * C + 5];
  const starts = [0, 37, C, 2 * C - 1];

  for (const tokens of lengths) {
    for (const start of starts) {
      test(`${tokens} tokens from position ${start}, carried state`, () => {
        const x = inputs(tokens, tokens + start, typical);
        const S0 = start === 0 ? mx.zeros([1, H, DV, DK], mx.float32) : randomState(start);
        const step = run("step", x, S0, start, C);
        const chunked = run("chunked", x, S0, start, C);
        expect(chunked.y.shape).toEqual([1, tokens, H, DV]);
        expect(chunked.S.shape).toEqual([1, H, DV, DK]);
        expect(maxAbsDiff(chunked.y, step.y)).toBeLessThan(1e-5);
        expect(maxAbsDiff(chunked.S, step.S)).toBeLessThan(1e-5);
        // Every block boundary strictly inside the segment, captured with the exact state.
        const expected: number[] = [];
        for (let p = start + 1; p < start + tokens; p++) if (p % C === 0) expected.push(p);
        expect([...chunked.captured.keys()]).toEqual(expected);
        expect([...step.captured.keys()]).toEqual(expected);
        for (const p of expected)
          expect(maxAbsDiff(chunked.captured.get(p)!, step.captured.get(p)!)).toBeLessThan(1e-5);
      });
    }
  }

  for (const [name, decay] of [
    ["near 1", nearOne],
    ["near 0", nearZero],
  ] as const) {
    test(`decay ${name}: finite and equal over ${3 * C + 5} tokens from a carried state`, () => {
      const x = inputs(3 * C + 5, 7, decay);
      const S0 = randomState(3);
      const step = run("step", x, S0, 11, C);
      const chunked = run("chunked", x, S0, 11, C);
      expect(finite(chunked.y)).toBe(true);
      expect(finite(chunked.S)).toBe(true);
      expect(maxAbsDiff(chunked.y, step.y)).toBeLessThan(1e-5);
      expect(maxAbsDiff(chunked.S, step.S)).toBeLessThan(1e-5);
    });
  }

  test("with a block size the chunk length does not divide (24 tokens), chunks still end on its boundaries", () => {
    const x = inputs(150, 5, typical);
    const S0 = randomState(9);
    const captured: number[] = [];
    const [y, S] = gatedDeltaRule(
      x,
      S0,
      20,
      (p) => p % 24 === 0,
      (i) => captured.push(20 + i + 1),
      24,
    );
    const step = run("step", x, S0, 20, 24);
    expect(captured).toEqual([24, 48, 72, 96, 120, 144, 168]);
    expect(maxAbsDiff(y, step.y)).toBeLessThan(1e-5);
    expect(maxAbsDiff(S, step.S)).toBeLessThan(1e-5);
  });
});
