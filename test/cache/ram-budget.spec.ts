import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as ts from "typescript";
import { removeTempDirs, tempDir } from "./helpers";

const ROOT = path.resolve(__dirname, "..", "..");

afterAll(removeTempDirs);

/** Transpiles what the child needs into outDir, keeping the relative layout so imports resolve. */
function transpile(outDir: string): string {
  const dirs = ["src/cache", "src/store", "test/cache/children"];
  const files = [
    ...dirs.flatMap((dir) => fs.readdirSync(path.join(ROOT, dir)).map((name) => path.join(dir, name))),
    "src/model/kv-cache.ts",
    "src/errors.ts",
  ].filter((file) => file.endsWith(".ts") && !file.endsWith(".spec.ts"));
  for (const file of files) {
    const output = ts.transpileModule(fs.readFileSync(path.join(ROOT, file), "utf8"), {
      compilerOptions: {
        module: ts.ModuleKind.CommonJS,
        target: ts.ScriptTarget.ES2022,
        esModuleInterop: true,
      },
      fileName: file,
    });
    const target = path.join(outDir, file.replace(/\.ts$/, ".js"));
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, output.outputText);
  }
  return path.join(outDir, "test", "cache", "children", "rss-budget.js");
}

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
        transpile(tempDir("child")),
        String(ramBytesMax),
        String(tokens),
        "16",
        path.join(tempDir("staging"), "s"),
      ],
      {
        env: {
          ...process.env,
          NODE_PATH: path.join(ROOT, "node_modules"),
          KVPARK_STORE_ADDON: path.join(ROOT, "native", "build", "Release", "kvpark_store.node"),
        },
        encoding: "utf8",
      },
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
