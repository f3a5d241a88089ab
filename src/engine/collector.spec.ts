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

describe("Collector.trim", () => {
  /** An allocator holding `active` bytes live and `kept` freed, whose purge returns every kept page. */
  function allocator(name: "jemalloc" | "system", active: number, kept: number) {
    const state = { purges: 0 };
    return {
      state,
      stats: () => ({
        name,
        version: "",
        allocatedBytes: active,
        activeBytes: active,
        residentBytes: active + kept,
      }),
      purge: () => {
        state.purges++;
        kept = 0;
        return name === "jemalloc";
      },
    };
  }

  it("keeps freed pages up to the bound", () => {
    const a = allocator("jemalloc", 300 * MiB, 64 * MiB);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    expect(collector.trim()).toEqual({ activeBytes: 300 * MiB, keptBytes: 64 * MiB, purges: 0 });
    expect(a.state.purges).toBe(0);
  });

  it("hands them back beyond the bound, and reports what is kept after", () => {
    const a = allocator("jemalloc", 300 * MiB, 65 * MiB);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    expect(collector.trim()).toEqual({ activeBytes: 300 * MiB, keptBytes: 0, purges: 1 });
  });

  it("hands them back when they and what is live pass the engine's memory bound", () => {
    const a = allocator("jemalloc", 300 * MiB, 40 * MiB);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    expect(collector.trim(350 * MiB).purges).toBe(0);
    expect(collector.trim(330 * MiB).purges).toBe(1);
  });

  it("leaves the system's malloc alone", () => {
    const a = allocator("system", 0, 0);
    const collector = new Collector(undefined, 1000, 0, a);
    expect(collector.trim()).toEqual({ activeBytes: 0, keptBytes: 0, purges: 0 });
    expect(a.state.purges).toBe(0);
  });
});
