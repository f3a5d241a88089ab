import type { PrefixCache, PrefixMatch } from "../../src/cache";
import type { LoadedModel } from "../../src/model/loader";
import { openCache, prefill, randomTokens, removeTempDirs, tinyModel } from "./helpers";

// PrefixMatch.divergedTokens, with the default block size: a cached prompt of 209 tokens is three
// full blocks of 64 and a trailing partial block of 17.

let model: LoadedModel;
let cache: PrefixCache;

beforeAll(async () => {
  model = await tinyModel();
});

beforeEach(async () => {
  cache = await openCache(model, { blockTokens: 64 });
});

afterEach(async () => {
  await cache.close();
});

afterAll(removeTempDirs);

const tokens = (seed: number, n: number) => randomTokens(seed, n, model.config.vocabSize);

function store(prompt: number[]): void {
  cache.persist("t", prompt, prefill(model, prompt));
}

/** A Generate's lookup: the last prompt token is always computed. */
function lookup(prompt: number[]): Pick<PrefixMatch, "tokens" | "divergedTokens"> & { blocks: number[] } {
  const match = cache.lookup("t", prompt, { tokensMax: prompt.length - 1 });
  return {
    tokens: match.tokens,
    blocks: match.blocks.map((b) => b.tokens),
    divergedTokens: match.divergedTokens,
  };
}

describe("divergedTokens", () => {
  it("is 0 for a prompt that extends a cached prompt ending in a partial block", () => {
    const cached = tokens(1, 209);
    store(cached);
    expect(lookup([...cached, ...tokens(2, 37)])).toEqual({
      tokens: 209,
      blocks: [64, 64, 64, 17],
      divergedTokens: 0,
    });
  });

  it("is 0 for a prompt continuing a PrefillStream's context", () => {
    // A PrefillStream persists full blocks as they fill and its partial tail when it closes;
    // Generate then continues from the handle's context with a prompt appended.
    const context = tokens(3, 150);
    const sequence = prefill(model, context);
    cache.persist("t", context, sequence, { partialTail: false });
    cache.persist("t", context, sequence);
    expect(lookup([...context, ...tokens(4, 20)])).toEqual({
      tokens: 150,
      blocks: [64, 64, 22],
      divergedTokens: 0,
    });
  });

  it("is 0 for a prompt sharing no token with the cache", () => {
    store(tokens(5, 209));
    expect(lookup(tokens(6, 100))).toEqual({ tokens: 0, blocks: [], divergedTokens: 0 });
  });

  it("counts from the first token: a prompt sharing a first block's leading tokens loses the rest of the line", () => {
    const cached = tokens(7, 209);
    store(cached);
    // 10 of the first block's tokens, then different: 54 + 64 + 64 + 17 lost.
    expect(lookup([...cached.slice(0, 10), ...tokens(8, 50)])).toEqual({
      tokens: 10,
      blocks: [10],
      divergedTokens: 199,
    });
  });

  it("mid-block: the rest of the block the prompt left and the cached line below it", () => {
    const cached = tokens(9, 209);
    store(cached);
    // 100 shared: 64 + 36 of the second block; lost 28 of it, then 64 + 17.
    const match = lookup([...cached.slice(0, 100), ...tokens(10, 50)]);
    expect(match).toEqual({ tokens: 100, blocks: [64, 36], divergedTokens: 109 });
    expect(match.tokens + match.divergedTokens).toBe(cached.length);
  });

  it("at a block boundary: the longest cached line below the last matched block, whichever branch holds it", () => {
    const shared = tokens(11, 128);
    store([...shared, ...tokens(12, 64)]); // one full block after the shared two
    store([...shared, ...tokens(13, 145)]); // 64 + 64 + 17 after them, persisted second
    expect(lookup([...shared, ...tokens(14, 40)])).toEqual({
      tokens: 128,
      blocks: [64, 64],
      divergedTokens: 145,
    });
  });

  it("is 0 for a prompt that ends inside cached context", () => {
    const cached = tokens(15, 209);
    store(cached);
    expect(lookup(cached.slice(0, 150))).toEqual({ tokens: 149, blocks: [64, 64, 21], divergedTokens: 0 });
    expect(lookup(cached)).toEqual({ tokens: 208, blocks: [64, 64, 64, 16], divergedTokens: 0 });
  });
});
