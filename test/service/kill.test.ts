import * as fs from "node:fs";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { InferenceService } from "../../gen/kvpark/v1/inference_pb";
import { KVBlocksService } from "../../gen/kvpark/v1/kvblocks_pb";
import { startServer, testModel, type ServerProcess } from "../helpers/server";

/** Kill cycles run in the suite; `scripts/kill-cycles.sh` runs more. */
const CYCLES = Number(process.env.KVPARK_KILL_CYCLES ?? 20);
const PROMPT_TOKENS = 150;
const SAMPLING = { maxTokens: 6, temperature: 1, topP: 0.95, seed: 1234n };

interface Persisted {
  ids: number[];
  /** Tokens Lookup found cached once the write queue had drained. */
  cachedTokens: number;
  /** The seeded output computed when the prompt was new. */
  output: number[];
}

function clients(server: ServerProcess) {
  const transport = createGrpcTransport({ baseUrl: server.url });
  return {
    inference: createClient(InferenceService, transport),
    kv: createClient(KVBlocksService, transport),
  };
}

async function generate(
  c: Client<typeof InferenceService>,
  ids: number[],
  signal?: AbortSignal,
): Promise<{ ids: number[]; corrupt: number; reused: number }> {
  const out = { ids: [] as number[], corrupt: 0, reused: 0 };
  const stream = c.generate(
    { prompt: { kind: { case: "tokens", value: { ids } } }, sampling: SAMPLING },
    { signal },
  );
  for await (const res of stream) {
    if (res.event.case === "started") {
      out.corrupt = res.event.value.cache!.corruptBlocks;
      out.reused = res.event.value.cache!.ramTokens + res.event.value.cache!.ssdTokens;
    } else if (res.event.case === "delta") out.ids.push(...res.event.value.tokenIds);
  }
  return out;
}

/** A prompt of its own for cycle `cycle`, number `n`: the first 64 tokens shared by every prompt. */
function prompt(cycle: number, n: number): number[] {
  return Array.from({ length: PROMPT_TOKENS }, (_, i) =>
    i < 64 ? 7 + i : 100 + ((i * 37 + cycle * 101 + n * 13) % 400),
  );
}

async function drained(kv: Client<typeof KVBlocksService>): Promise<void> {
  for (;;) {
    const s = await kv.stats({});
    if (s.writeQueueDepth === 0) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(" ")[2].startsWith("Z");
  } catch {
    return false;
  }
}

describe("kill -9 of front end and engine under write load", () => {
  it(
    `loses no persisted block, serves none corrupt, and restarts at once, ${CYCLES} times`,
    async () => {
      const model = testModel();
      const persisted: Persisted[] = [];
      let dataDir: string | undefined;
      let restarts = 0;
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        // Started right after the previous front end was killed, on the same data directory.
        const server = await startServer({
          model,
          dataDir,
          args: ["--ssd-fsync", "batch", "--cost-model=false", "--prefill-chunk-tokens", "8192"],
        });
        restarts += cycle > 0 ? 1 : 0;
        dataDir = server.dataDir;
        const enginePid = (await server.waitEvent("engine_start")).pid as number;
        const { inference, kv } = clients(server);
        // Everything reported persisted before is still there, and restores to the same output.
        // Every one is looked up; the last cycle's and a few others restore and generate (all of them
        // at the end), so that a long run stays linear.
        const restored = new Set(persisted.slice(-2));
        for (let k = 0; k < 6 && persisted.length > 0; k++)
          restored.add(persisted[(cycle * 7 + k * 13) % persisted.length]);
        for (const p of persisted) {
          const found = await kv.lookup({ prompt: { kind: { case: "tokens", value: { ids: p.ids } } } });
          expect(found.cachedTokens).toBeGreaterThanOrEqual(p.cachedTokens);
          if (!restored.has(p)) continue;
          const again = await generate(inference, p.ids);
          expect(again.corrupt).toBe(0);
          expect(again.reused).toBe(PROMPT_TOKENS - 1);
          expect(again.ids).toEqual(p.output);
        }
        // New prompts; once the write queue has drained, they count as persisted.
        for (let n = 0; n < 2; n++) {
          const ids = prompt(cycle, n);
          const out = await generate(inference, ids);
          await drained(kv);
          const found = await kv.lookup({ prompt: { kind: { case: "tokens", value: { ids } } } });
          expect(found.cachedTokens).toBe(PROMPT_TOKENS);
          persisted.push({ ids, cachedTokens: found.cachedTokens, output: out.ids });
        }
        // Write load in flight, then SIGKILL: front end only on even cycles (its engine must end
        // itself), engine and front end together on odd ones.
        const load = new AbortController();
        const writes = [2, 3, 4].map((n) =>
          generate(inference, prompt(cycle, n), load.signal).catch(() => undefined),
        );
        await new Promise((r) => setTimeout(r, 30 + ((cycle * 17) % 60)));
        if (cycle % 2 === 1) process.kill(enginePid, "SIGKILL");
        server.child.kill("SIGKILL");
        await server.exited;
        load.abort();
        await Promise.all(writes);
        if (cycle % 2 === 0) {
          // The orphaned engine ends itself promptly instead of computing on with the store locked.
          // (The engine's own watch polls every 50 ms; the bound leaves a loaded machine room.)
          const deadline = Date.now() + 5000;
          while (alive(enginePid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
          expect(alive(enginePid)).toBe(false);
        }
      }
      const last = await startServer({ model, dataDir, args: ["--cost-model=false"] });
      try {
        const { inference } = clients(last);
        for (const p of persisted) expect((await generate(inference, p.ids)).ids).toEqual(p.output);
      } finally {
        await last.stop();
      }
      expect(restarts).toBe(CYCLES - 1);
      expect(persisted).toHaveLength(2 * CYCLES);
    },
    60_000 + CYCLES * 30_000,
  );
});
