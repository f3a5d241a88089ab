import type { PrefixCache } from "../cache/index.js";
import { Collector } from "./collector.js";

const MiB = 1024 * 1024;

/** A cache that has dropped the given bytes, handed over once. */
function cacheDropping(bytes: number): PrefixCache {
  let pending = bytes;
  return {
    takeDroppedBytes: () => {
      const taken = pending;
      pending = 0;
      return taken;
    },
  } as unknown as PrefixCache;
}

describe("Collector", () => {
  const realGc = global.gc;
  let collections = 0;
  beforeEach(() => {
    collections = 0;
    global.gc = (() => void collections++) as typeof global.gc;
  });
  afterAll(() => {
    global.gc = realGc;
  });

  it("collects on the engine's and the cache's dropped bytes together", () => {
    // Neither reaches 256 MiB alone; together they do.
    const collector = new Collector(cacheDropping(150 * MiB), 1000);
    collector.dropped(150 * MiB);
    collector.step();
    expect(collections).toBe(1);
    expect(collector.pending).toBe(0);
  });

  it("waits below the threshold, and counts the cache's bytes in what is pending", () => {
    const collector = new Collector(cacheDropping(100 * MiB), 1000);
    collector.dropped(100 * MiB);
    collector.step();
    expect(collections).toBe(0);
    expect(collector.pending).toBe(200 * MiB);
    collector.step(true);
    expect(collections).toBe(1);
    expect(collector.pending).toBe(0);
  });

  it("works without a cache", () => {
    const collector = new Collector(undefined, 1000);
    collector.dropped(300 * MiB);
    collector.step();
    expect(collections).toBe(1);
  });
});
