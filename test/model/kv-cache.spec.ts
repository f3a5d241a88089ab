import { core as mx } from "@frost-beta/mlx";
import { KVCache, type LayerKV } from "../../src/model/kv-cache";
import { ModelCache } from "../../src/model/model-cache";

/** [1, 2, n, 4] filled with `start`, `start + 1`, ... per position (every element of a position equal). */
function positions(start: number, n: number): mx.array {
  return mx.broadcastTo(mx.arange(start, start + n, 1, mx.float32).reshape(1, 1, n, 1), [1, 2, n, 4]);
}

/** The value stored at each position of a [1, 2, n, 4] array (first head, first dim). */
function valuesAt(a: mx.array): number[] {
  return (a.tolist() as number[][][][])[0][0].map((row) => row[0]);
}

describe("KVCache", () => {
  test("grows in whole steps and writes at the offset", () => {
    const cache = new KVCache(2, 4, 8);
    expect(cache.capacity).toBe(0);
    const [keys, values] = cache.updateAndFetch(positions(0, 3), positions(100, 3));
    expect(cache.offset).toBe(3);
    expect(cache.capacity).toBe(8);
    expect(keys.shape).toEqual([1, 2, 8, 4]);
    expect(valuesAt(keys)).toEqual([0, 1, 2, 0, 0, 0, 0, 0]);
    expect(valuesAt(values)).toEqual([100, 101, 102, 0, 0, 0, 0, 0]);
    const [grown] = cache.updateAndFetch(positions(3, 6), positions(103, 6));
    expect(cache.offset).toBe(9);
    expect(cache.capacity).toBe(16);
    expect(valuesAt(grown)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0]);
  });

  test("exported ranges are copies that later writes do not change", () => {
    const cache = new KVCache(2, 4, 8);
    cache.updateAndFetch(positions(0, 6), positions(50, 6));
    const range = cache.exportRange(2, 5);
    expect(range.keys.shape).toEqual([1, 2, 3, 4]);
    expect(valuesAt(range.keys)).toEqual([2, 3, 4]);
    expect(valuesAt(range.values)).toEqual([52, 53, 54]);
    cache.trim(4);
    cache.updateAndFetch(positions(90, 4), positions(90, 4));
    expect(valuesAt(range.keys)).toEqual([2, 3, 4]);
    expect(() => cache.exportRange(4, 7)).toThrow("exportRange(4, 7) outside the cached range [0, 6)");
  });

  test("import writes at a position and drops what followed", () => {
    const cache = new KVCache(2, 4, 8);
    cache.updateAndFetch(positions(0, 6), positions(0, 6));
    cache.importRange(2, positions(20, 2), positions(30, 2));
    expect(cache.offset).toBe(4);
    const range = cache.exportRange(0, 4);
    expect(valuesAt(range.keys)).toEqual([0, 1, 20, 21]);
    expect(valuesAt(range.values)).toEqual([0, 1, 30, 31]);
    expect(() => cache.importRange(5, positions(0, 1), positions(0, 1))).toThrow(
      "importRange at 5: must be within [0, 4] so the cache stays contiguous",
    );
    expect(() => cache.importRange(0, mx.zeros([1, 3, 2, 4]), mx.zeros([1, 3, 2, 4]))).toThrow(
      "importRange keys: expected [1, 2, n, 4], got [1, 3, 2, 4]",
    );
  });

  test("pieces imported into an empty or skipped layer build the buffer the joined rows would", () => {
    const fresh = new KVCache(2, 4, 8);
    fresh.importRange(
      0,
      [positions(0, 3), positions(3, 4), positions(7, 2)],
      [positions(50, 5), positions(55, 4)],
    );
    expect(fresh.offset).toBe(9);
    expect(fresh.capacity).toBe(16);
    const [keys, values] = fresh.state();
    expect(valuesAt(keys)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0]);
    expect(valuesAt(values)).toEqual([50, 51, 52, 53, 54, 55, 56, 57, 58, 0, 0, 0, 0, 0, 0, 0]);
    // Writes after the import land in the built buffer, which owns its memory.
    const [after] = fresh.updateAndFetch(positions(90, 1), positions(90, 1));
    expect(valuesAt(after).slice(0, 11)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 90, 0]);

    // A reserved buffer, and rows skipped below the import (a sliding window's): zeros before them.
    const skipped = new KVCache(2, 4, 8);
    skipped.reserve(20);
    skipped.skipTo(5);
    skipped.importRange(5, [positions(5, 2), positions(7, 1)], [positions(5, 3)]);
    expect(skipped.offset).toBe(8);
    expect(skipped.capacity).toBe(24);
    expect(valuesAt(skipped.state()[0]).slice(0, 10)).toEqual([0, 0, 0, 0, 0, 5, 6, 7, 0, 0]);
    expect(() => skipped.exportRange(4, 8)).toThrow("positions below 5 were not restored");

    // Into a layer holding tokens: written at the position, as a single array is.
    const held = new KVCache(2, 4, 8);
    held.updateAndFetch(positions(0, 4), positions(0, 4));
    held.importRange(2, [positions(20, 1), positions(21, 1)], [positions(30, 2)]);
    expect(valuesAt(held.exportRange(0, 4).keys)).toEqual([0, 1, 20, 21]);
    expect(() => held.importRange(0, [positions(0, 2)], [positions(0, 3)])).toThrow(
      "importRange: keys hold 2 tokens but values 3",
    );
  });

  test("half-precision pieces come back as the float32 buffer, in every path", () => {
    const half = (start: number, n: number) => positions(start, n).astype(mx.float16);
    const check = (cache: KVCache, keys: number[]) => {
      const [k, v] = cache.state();
      expect([k.dtype, v.dtype]).toEqual([mx.float32, mx.float32]);
      expect(valuesAt(k).slice(0, keys.length)).toEqual(keys);
    };
    // Into an empty layer: built with zeros after the rows (concatenated) ...
    const joined = new KVCache(2, 4, 8);
    joined.importRange(0, [half(0, 3), half(3, 3)], [half(10, 6)]);
    check(joined, [0, 1, 2, 3, 4, 5, 0, 0]);
    // ... with zeros before them (padded), and filling the capacity exactly (no zeros at all).
    const padded = new KVCache(2, 4, 8);
    padded.skipTo(6);
    padded.importRange(6, [half(6, 1)], [half(6, 1)]);
    check(padded, [0, 0, 0, 0, 0, 0, 6, 0]);
    const exact = new KVCache(2, 4, 8);
    exact.importRange(0, [half(0, 4), half(4, 4)], [half(0, 8)]);
    check(exact, [0, 1, 2, 3, 4, 5, 6, 7]);
    // Into a layer holding tokens.
    const held = new KVCache(2, 4, 8);
    held.updateAndFetch(positions(0, 2), positions(0, 2));
    held.importRange(1, [half(30, 1), half(31, 1)], [half(30, 2)]);
    check(held, [0, 30, 31]);
  });

  test("trim drops at most what is cached", () => {
    const cache = new KVCache(2, 4);
    cache.updateAndFetch(positions(0, 5), positions(0, 5));
    expect(cache.trim(2)).toBe(2);
    expect(cache.offset).toBe(3);
    expect(cache.trim(10)).toBe(3);
    expect(cache.offset).toBe(0);
  });
});

describe("ModelCache", () => {
  test("export and import cover every layer", () => {
    const cache = new ModelCache(3, 2, 4, 8);
    cache.layers.forEach((layer, i) =>
      layer.updateAndFetch(positions(i * 10, 5), positions(i * 10 + 100, 5)),
    );
    expect(cache.offset).toBe(5);
    const exported = cache.export(1, 4) as LayerKV[];
    expect(exported.map((l) => valuesAt(l.keys))).toEqual([
      [1, 2, 3],
      [11, 12, 13],
      [21, 22, 23],
    ]);
    const fresh = new ModelCache(3, 2, 4);
    fresh.reserve(300);
    expect(fresh.capacity).toBe(512);
    fresh.layers.forEach((layer) => layer.updateAndFetch(positions(0, 1), positions(0, 1)));
    fresh.import(1, exported);
    expect(fresh.offset).toBe(4);
    expect((fresh.export(0, 4) as LayerKV[]).map((l) => valuesAt(l.values))).toEqual([
      [0, 101, 102, 103],
      [0, 111, 112, 113],
      [0, 121, 122, 123],
    ]);
    expect(() => fresh.import(0, exported.slice(1))).toThrow("import: got 2 layers, the model has 3");
  });
});
