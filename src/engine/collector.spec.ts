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
  /** An allocator with `active` bytes in use and `kept` freed, whose purge returns every kept page. */
  function allocator(name: "jemalloc" | "system", active: number, kept: number) {
    const state = { active, kept, purges: 0 };
    return {
      state,
      stats: () => ({
        name,
        version: "",
        allocatedBytes: state.active,
        activeBytes: state.active,
        residentBytes: state.active + state.kept,
      }),
      purge: () => {
        state.purges++;
        state.kept = 0;
        return name === "jemalloc";
      },
    };
  }

  it("keeps freed pages within the engine's peak use, however many", () => {
    const a = allocator("jemalloc", 900 * MiB, 0);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    collector.step();
    // A request's temporaries were freed: 600 MiB kept, the peak was 900 MiB in use.
    Object.assign(a.state, { active: 300 * MiB, kept: 600 * MiB });
    expect(collector.trim()).toEqual({ activeBytes: 300 * MiB, keptBytes: 600 * MiB, purges: 0 });
    expect(a.state.purges).toBe(0);
  });

  it("hands them back once they pass the peak by more than the bound, and the peak starts again", () => {
    const a = allocator("jemalloc", 450 * MiB, 0);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    collector.step();
    Object.assign(a.state, { active: 350 * MiB, kept: 164 * MiB });
    expect(collector.trim().purges).toBe(0);
    a.state.kept = 165 * MiB;
    expect(collector.trim()).toEqual({ activeBytes: 350 * MiB, keptBytes: 0, purges: 1 });
    // Since the purge the peak is what was in use then: 350 MiB.
    a.state.kept = 65 * MiB;
    expect(collector.trim().purges).toBe(2);
  });

  it("hands them back when they and what is in use pass the engine's memory bound", () => {
    const a = allocator("jemalloc", 300 * MiB, 40 * MiB);
    const collector = new Collector(undefined, 1000, 64 * MiB, a);
    expect(collector.trim(350 * MiB).purges).toBe(0);
    a.state.kept = 40 * MiB;
    expect(collector.trim(330 * MiB).purges).toBe(1);
  });

  it("leaves the system's malloc alone", () => {
    const a = allocator("system", 0, 0);
    const collector = new Collector(undefined, 1000, 0, a);
    expect(collector.trim()).toEqual({ activeBytes: 0, keptBytes: 0, purges: 0 });
    expect(a.state.purges).toBe(0);
  });
});
