import * as fs from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, type ServerProcess } from "../helpers/server";

const RAM_BYTES_MAX = 128 * 1024 * 1024;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]) * 1024;
}

/** Runs the same sustained load (distinct prompts, two streams at a time) and samples the engine's RSS. */
async function sustainedLoad(server: ServerProcess): Promise<number> {
  const enginePid = (await server.waitEvent("engine_start")).pid as number;
  const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  let max = 0;
  const sampler = setInterval(() => (max = Math.max(max, rssBytes(enginePid))), 25);
  try {
    for (let round = 0; round < 14; round++) {
      await Promise.all(
        [0, 1].map(async (k) => {
          const ids = Array.from({ length: 600 }, (_, i) => (i * 31 + round * 977 + k) % 8000);
          for await (const _ of client.generate({
            prompt: { kind: { case: "tokens", value: { ids } } },
            sampling: { maxTokens: 16 },
          }));
        }),
      );
    }
  } finally {
    clearInterval(sampler);
  }
  return max;
}

describe("memory", () => {
  it("the cache adds no more than its RAM budget (+10%) to the engine's RSS under sustained load", async () => {
    // The same load without the cache measures the engine's own working set: weights, runtime, compute.
    const uncached = await startServer({ model: "small", args: ["--cache=false"] });
    const baseline = await sustainedLoad(uncached).finally(() => uncached.stop());
    const cached = await startServer({
      model: "small",
      dataDir: uncached.dataDir,
      args: ["--ram-bytes-max", String(RAM_BYTES_MAX), "--ssd-fsync", "none"],
    });
    try {
      const peak = await sustainedLoad(cached);
      const stats = await createClient(KVBlocksService, createGrpcTransport({ baseUrl: cached.url })).stats(
        {},
      );
      // The budget was filled and enforced, so the comparison is meaningful.
      expect(Number(stats.ram!.evictions)).toBeGreaterThan(0);
      expect(Number(stats.ram!.bytes)).toBeLessThanOrEqual(RAM_BYTES_MAX);
      expect(peak).toBeLessThanOrEqual((baseline + RAM_BYTES_MAX) * 1.1);
    } finally {
      await cached.stop();
    }
  }, 180_000);
});
