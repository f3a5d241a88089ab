import { execFileSync } from "node:child_process";
import * as path from "node:path";
import { childEnv, removeTempDirs, tempDir, transpileForChild } from "./helpers";

afterAll(removeTempDirs);

describe("the RAM tier's budget is real memory", () => {
  it("RSS stays within the budget plus the sequences in flight while blocks are evicted", () => {
    const MB = 1024 * 1024;
    const ramBytesMax = 64 * MB;
    const tokens = 1024; // 24 MiB of KV per sequence of this shape
    const sequenceBytes = tokens * 24 * 2 * 2 * 64 * 4;
    const out = execFileSync(
      process.execPath,
      [
        "--expose-gc",
        transpileForChild(tempDir("child"), "rss-budget"),
        String(ramBytesMax),
        String(tokens),
        "16",
        path.join(tempDir("staging"), "s"),
      ],
      { env: childEnv(), encoding: "utf8" },
    );
    const samples = out
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as { rssGrowthBytes: number; ramBytes: number });
    expect(samples.length).toBe(16);
    // 16 sequences of 24 MiB went through a 64 MiB tier: 384 MiB of blocks were created and
    // 42 blocks of 1.5 MiB (64 tokens) fill the tier.
    expect(samples[15].ramBytes).toBe(42 * 64 * 24 * 2 * 2 * 64 * 4);
    // Without collection RSS would grow by about 2 x 384 MiB (sequences and blocks). Measured:
    // it levels off at about the budget plus three sequences (the one just dropped, the one
    // whose finalizers are pending, allocator slack) once the tier is full, after request 3.
    const growth = samples.map((s) => s.rssGrowthBytes);
    expect(Math.max(...growth)).toBeLessThan(ramBytesMax + 4 * sequenceBytes);
    expect(Math.max(...growth.slice(6)) - growth[5]).toBeLessThan(sequenceBytes);
  });
});
