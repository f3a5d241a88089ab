import * as fs from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, type ServerProcess } from "../helpers/server";

const MiB = 1024 * 1024;
const RAM_BYTES_MAX = 128 * MiB;
const KEPT_BYTES_MAX = 32 * MiB;

function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m![1]) * 1024;
}

/**
 * Runs a sustained load (distinct prompts, two streams at a time) for `rounds` rounds, `persist`
 * telling whether the requests may store their KV in the cache, and returns the engine's peak RSS
 * in each round.
 */
async function sustainedLoad(
  server: ServerProcess,
  enginePid: number,
  persist: boolean,
  rounds = 14,
): Promise<number[]> {
  const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  const peaks: number[] = [];
  let max = 0;
  const sampler = setInterval(() => (max = Math.max(max, rssBytes(enginePid))), 25);
  try {
    for (let round = 0; round < rounds; round++) {
      max = rssBytes(enginePid);
      await Promise.all(
        [0, 1].map(async (k) => {
          // Prompts of one phase share no block with the other's.
          const first = persist ? 1 : 0;
          const ids = [first, ...Array.from({ length: 599 }, (_, i) => (i * 31 + round * 977 + k) % 8000)];
          for await (const _ of client.generate({
            prompt: { kind: { case: "tokens", value: { ids } } },
            sampling: { maxTokens: 16 },
            cache: { persist },
          }));
        }),
      );
      peaks.push(Math.max(max, rssBytes(enginePid)));
    }
  } finally {
    clearInterval(sampler);
  }
  return peaks;
}

describe("memory", () => {
  it("the cache adds no more than its RAM budget (+10%) to the engine's RSS under sustained load", async () => {
    const server = await startServer({
      model: "small",
      // The allocator keeps few freed pages (the bound has a test of its own below), so that both
      // peaks measure what is live rather than how many freed pages it happened to keep.
      args: [
        "--ram-bytes-max",
        String(RAM_BYTES_MAX),
        "--ssd-fsync",
        "none",
        "--engine-kept-bytes-max",
        String(KEPT_BYTES_MAX),
      ],
    });
    try {
      const enginePid = (await server.waitEvent("engine_start")).pid as number;
      // The load storing nothing measures the engine's own working set: weights, runtime, compute,
      // and the pages its allocator keeps for reuse. The same engine then runs it filling the cache,
      // so the second peak differs from the first by what the cache holds, not by how two processes'
      // allocators happened to grow.
      const baseline = Math.max(...(await sustainedLoad(server, enginePid, false)));
      const blocks = createClient(KVBlocksService, createGrpcTransport({ baseUrl: server.url }));
      expect(Number((await blocks.stats({})).ram!.bytes)).toBe(0);
      const peak = Math.max(...(await sustainedLoad(server, enginePid, true)));
      const stats = await blocks.stats({});
      // The budget was filled and enforced, so the comparison is meaningful.
      expect(Number(stats.ram!.evictions)).toBeGreaterThan(0);
      expect(Number(stats.ram!.bytes)).toBeLessThanOrEqual(RAM_BYTES_MAX);
      expect(peak).toBeLessThanOrEqual((baseline + RAM_BYTES_MAX) * 1.1);
    } finally {
      await server.stop();
    }
  }, 180_000);

  it("bounds the freed pages the engine keeps, so a load that never lets it idle does not grow it", async () => {
    const server = await startServer({
      model: "small",
      args: ["--engine-kept-bytes-max", String(KEPT_BYTES_MAX), "--engine-idle-purge-ms", "600000"],
    });
    try {
      const enginePid = (await server.waitEvent("engine_start")).pid as number;
      const blocks = createClient(KVBlocksService, createGrpcTransport({ baseUrl: server.url }));
      const peaks = await sustainedLoad(server, enginePid, false, 30);
      const engine = (await blocks.stats({})).engine!;
      // Unbounded, the kept pages grew by about 9 MB a round here (over 200 MB in 30 rounds) while
      // what was in use stayed the same: the engine handed them back, and stayed near its early size.
      expect(Number(engine.allocatorPurges)).toBeGreaterThan(0);
      expect(Number(engine.allocatorActiveBytes)).toBeGreaterThan(0);
      // Bounded, the last ten rounds peaked 0-20 MB above the first ten here; unbounded, 133 MB.
      const early = Math.max(...peaks.slice(0, 10));
      const late = Math.max(...peaks.slice(20));
      expect(late).toBeLessThanOrEqual(early + 2 * KEPT_BYTES_MAX);
    } finally {
      await server.stop();
    }
  }, 180_000);

  it("keeps the engine within --engine-memory-max under 16 concurrent prompts: the rest wait, none fails", async () => {
    // Room for the loaded engine, the RAM tier and a step's work, and a few sequences beside: the
    // other requests must queue in the engine rather than fail or grow it.
    const memoryMax = 640 * 1024 * 1024;
    const server = await startServer({
      model: "small",
      args: ["--ram-bytes-max", String(RAM_BYTES_MAX), "--engine-memory-max", String(memoryMax)],
    });
    try {
      const enginePid = (await server.waitEvent("engine_start")).pid as number;
      const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
      const blocks = createClient(KVBlocksService, createGrpcTransport({ baseUrl: server.url }));
      let peak = 0;
      let waited = 0;
      let reported = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(enginePid))), 25);
      const poller = setInterval(() => {
        void blocks.stats({}).then((s) => {
          waited = Math.max(waited, s.engine?.sequencesWaiting ?? 0);
          reported = Math.max(reported, Number(s.engine?.rssBytes ?? 0));
        });
      }, 100);
      const finished = await Promise.all(
        Array.from({ length: 16 }, async (_, k) => {
          const ids = Array.from({ length: 500 }, (_, i) => (i * 37 + k * 1009) % 8000);
          let reason = "";
          for await (const r of client.generate({
            prompt: { kind: { case: "tokens", value: { ids } } },
            sampling: { maxTokens: 64 },
          })) {
            if (r.event.case === "finished") reason = String(r.event.value.finishReason);
          }
          return reason;
        }),
      ).finally(() => {
        clearInterval(sampler);
        clearInterval(poller);
      });
      expect(finished.every((r) => r !== "")).toBe(true);
      const stats = await blocks.stats({});
      expect(Number(stats.engine!.memoryMaxBytes)).toBe(memoryMax);
      // Some requests waited for memory, and the engine stayed within its bound.
      expect(waited).toBeGreaterThan(0);
      expect(reported).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(memoryMax);
    } finally {
      await server.stop();
    }
  }, 180_000);
});
