import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";

/** Median of a non-empty list (mean of the middle two for even lengths); NaN for an empty one. */
export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x));
  if (v.length === 0) return Number.NaN;
  const sorted = [...v].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * The p-th percentile (0..100) of a list, interpolated linearly between the closest ranks (numpy's
 * default); NaN for an empty one.
 */
export function percentile(values: readonly number[], p: number): number {
  const sorted = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

/** Median with the spread of the samples, as stored in the JSON results. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
  samples: number[];
}

export function summarize(values: readonly number[]): Summary {
  const v = values.filter((x) => Number.isFinite(x));
  return {
    median: median(v),
    min: v.length ? Math.min(...v) : Number.NaN,
    max: v.length ? Math.max(...v) : Number.NaN,
    n: v.length,
    samples: v.map((x) => Math.round(x * 1000) / 1000),
  };
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export function msSince(start: number): number {
  return performance.now() - start;
}

/** Progress on stderr, prefixed with the time since the run started. */
export class Progress {
  private readonly t0 = performance.now();
  log(message: string): void {
    const s = Math.round((performance.now() - this.t0) / 1000);
    const mm = Math.floor(s / 60);
    const ss = String(s % 60).padStart(2, "0");
    process.stderr.write(`[${mm}:${ss}] ${message}\n`);
  }
  elapsedSeconds(): number {
    return (performance.now() - this.t0) / 1000;
  }
}

let dropWorks: boolean | undefined;

/**
 * Writes dirty pages and drops the page cache, so the next read comes from the disk. Needs root;
 * returns false (and the numbers that follow are warm-cache numbers) when it cannot.
 */
export function dropPageCache(): boolean {
  execFileSync("sync");
  if (dropWorks === false) return false;
  try {
    fs.writeFileSync("/proc/sys/vm/drop_caches", "3");
    dropWorks = true;
  } catch {
    dropWorks = false;
  }
  return dropWorks;
}

/** Whether dropPageCache() has worked (undefined before the first call). */
export function pageCacheDropWorks(): boolean | undefined {
  return dropWorks;
}

/**
 * Reads `bytes` bytes of the given files in order with `dd iflag=direct` (page cache bypassed),
 * returning the elapsed milliseconds.
 */
export function ddDirect(files: readonly string[], bytes: number): number {
  const bs = 4 << 20;
  let left = bytes;
  const start = performance.now();
  for (const file of files) {
    if (left <= 0) break;
    const size = fs.statSync(file).size;
    const take = Math.min(size, left);
    const count = Math.ceil(take / bs);
    const r = spawnSync("dd", [
      `if=${file}`,
      "of=/dev/null",
      `bs=${bs}`,
      `count=${count}`,
      "iflag=direct",
      "status=none",
    ]);
    if (r.status !== 0) throw new Error(`dd failed on ${file}: ${r.stderr.toString()}`);
    left -= count * bs;
  }
  return performance.now() - start;
}

export function round(x: number, digits = 1): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** A number for a table cell: thousands separated, fixed digits, "n/a" when not measured. */
export function fmt(x: number | undefined, digits = 0): string {
  if (x === undefined || !Number.isFinite(x)) return "n/a";
  return x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Small deterministic PRNG (mulberry32), so generated prompts and sessions are the same every run. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }
}

/** `n` token ids below `vocab`, drawn from a seeded generator. */
export function randomTokens(seed: number, n: number, vocab: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length: n }, () => rng.int(0, vocab - 1));
}
