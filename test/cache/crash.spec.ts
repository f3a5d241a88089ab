import { spawn } from "node:child_process";
import * as path from "node:path";
import { core as mx } from "@frost-beta/mlx";
import { PrefixCache } from "../../src/cache";
import { type LayerKV } from "../../src/model/kv-cache";
import { ModelCache } from "../../src/model/model-cache";
import { CRASH_SHAPE, CRASH_TOKENS } from "./children/crash-writer";
import { childEnv, removeTempDirs, tempDir, transpileForChild } from "./helpers";

afterAll(removeTempDirs);

/** Runs the writer until it has made `durable` sequences durable, then kills it with SIGKILL. */
function writeThenKill(ssdDir: string, durable: number): Promise<number> {
  const script = transpileForChild(tempDir("child"), "crash-writer");
  const child = spawn(process.execPath, [script, ssdDir, path.join(tempDir("staging"), "s")], {
    env: childEnv(),
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let last = -1;
    let buffered = "";
    child.stdout.on("data", (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      const lines = buffered.split("\n");
      buffered = lines.pop()!;
      for (const line of lines) last = (JSON.parse(line) as { done: number }).done;
      // Killed while it is writing the next sequence.
      if (last >= durable - 1 && child.exitCode === null) child.kill("SIGKILL");
    });
    child.on("error", reject);
    child.on("exit", () => resolve(last));
  });
}

describe("kill -9 while writing", () => {
  it("every sequence reported durable is restored after a restart, from the chain log, with its values", async () => {
    const ssdDir = tempDir("ssd");
    const durable = await writeThenKill(ssdDir, 6);
    expect(durable).toBeGreaterThanOrEqual(5);
    const cache = await PrefixCache.open(CRASH_SHAPE, {
      blockTokens: 8,
      ssdDir,
      stagingDir: path.join(tempDir("staging"), "s"),
      ssdSegmentBytes: 1024 * 1024,
      ssdBytesMax: 256 * 1024 * 1024,
    });
    expect(cache.stats().ssdIndexSource).toBe("log");
    for (let i = 0; i <= durable; i++) {
      const tokens = Array.from({ length: CRASH_TOKENS }, (_, k) => i * 1000 + k);
      const match = cache.lookup("crash", tokens);
      expect(match).toMatchObject({ tokens: CRASH_TOKENS, ssdTokens: CRASH_TOKENS });
      const sequence = new ModelCache(CRASH_SHAPE.numLayers, CRASH_SHAPE.kvHeads, CRASH_SHAPE.headDim);
      const report = await cache.restore(match, sequence);
      expect(report).toMatchObject({ restoredTokens: CRASH_TOKENS, corruptBlocks: 0 });
      for (const { keys, values } of sequence.export(0, CRASH_TOKENS) as LayerKV[]) {
        expect(mx.all(mx.equal(keys, i)).item()).toBe(true);
        expect(mx.all(mx.equal(values, -i)).item()).toBe(true);
      }
    }
    // Whatever the killed write left behind is either whole or absent: nothing fails verification.
    expect(cache.stats().corruptBlocks).toBe(0);
    await cache.close();
  });
});
