import * as fs from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { startServer, type ServerProcess } from "../helpers/server";

/** Anonymous memory a process holds in RAM, in bytes. */
function rssAnon(pid: number): number {
  return Number(/RssAnon:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
}

/** The shared libraries mapped into a process. */
function mappedLibraries(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/maps`, "utf8");
}

async function generate(server: ServerProcess, temperature: number, promptTokens = 300): Promise<number[]> {
  const client = createClient(InferenceService, createGrpcTransport({ baseUrl: server.url }));
  const ids: number[] = [];
  for await (const r of client.generate({
    prompt: {
      kind: {
        case: "tokens",
        value: { ids: Array.from({ length: promptTokens }, (_, i) => (i * 53) % 500) },
      },
    },
    sampling: { maxTokens: 24, temperature, seed: 11n },
  })) {
    if (r.event.case === "delta") ids.push(...r.event.value.tokenIds);
  }
  return ids;
}

describe("the engine's allocator", () => {
  it("runs the engine on jemalloc by default and on the C library's malloc on request, with equal answers", async () => {
    const jemalloc = await startServer();
    const system = await startServer({ args: ["--engine-allocator", "system"] });
    try {
      const onJemalloc = await jemalloc.waitEvent("engine_ready");
      expect(onJemalloc.allocator).toMatch(/^jemalloc 5\.\d+\.\d+$/);
      expect(mappedLibraries((await jemalloc.waitEvent("engine_start")).pid as number)).toMatch(
        /libjemalloc\.so\.2/,
      );
      expect((await system.waitEvent("engine_ready")).allocator).toBe("system");
      expect(mappedLibraries((await system.waitEvent("engine_start")).pid as number)).not.toMatch(/jemalloc/);
      // Only the front end's child is preloaded: the front end itself keeps the C library's malloc.
      expect(mappedLibraries(jemalloc.child.pid!)).not.toMatch(/jemalloc/);

      for (const temperature of [0, 0.9]) {
        const scratch = await generate(system, temperature);
        expect(scratch).toHaveLength(24);
        // Computed once, then restored from the RAM tier (the same prompt every time).
        expect(await generate(jemalloc, temperature)).toEqual(scratch);
        expect(await generate(jemalloc, temperature)).toEqual(scratch);
      }
    } finally {
      await Promise.all([jemalloc.stop(), system.stop()]);
    }
  }, 120_000);

  it("keeps freed pages while requests come and hands them back once the engine is idle", async () => {
    const idle = await startServer({ args: ["--engine-idle-purge-ms", "1000"] });
    const busy = await startServer({ args: ["--engine-idle-purge-ms", "600000"] });
    try {
      const pids = await Promise.all(
        [idle, busy].map(async (s) => (await s.waitEvent("engine_start")).pid as number),
      );
      await Promise.all([idle, busy].map((s) => s.waitEvent("engine_ready")));
      const after: number[] = [];
      for (const [i, server] of [idle, busy].entries()) {
        await generate(server, 0, 3000);
        after.push(rssAnon(pids[i]));
      }
      await new Promise((resolve) => setTimeout(resolve, 3000));
      const released = [0, 1].map((i) => after[i] - rssAnon(pids[i]));
      // The prefill's temporaries (attention over 3,000 positions) were freed and kept: the idle
      // engine returned them, the other still holds them.
      expect(released[0]).toBeGreaterThan(20 * 1024 * 1024);
      expect(released[1]).toBeLessThan(released[0] / 4);
    } finally {
      await Promise.all([idle.stop(), busy.stop()]);
    }
  }, 120_000);
});
